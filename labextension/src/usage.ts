/**
 * A usage plot: the SVG that nbmonitor.plot draws, the peak lines above it, a
 * legend that hides and shows processes, and a read-out of the nearest column
 * under the pointer (what plot.py's HTML page does, here in TypeScript).
 * UsageChart draws it, for a run's row in the Runs panel (UsageView, from
 * nbmonitor/api/runs/<id>/usage) and for a cell's output (./output.ts).
 *
 * The SVG and the columns may come from a notebook anyone wrote: the SVG is
 * parsed as SVG and only the elements and attributes the plot draws are
 * adopted; the columns are read only when they are arrays of numbers. Nothing
 * of either is ever set as HTML, and every text built here is set with
 * textContent.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** Refresh a running run's plot at most this often (its history is written every few seconds). */
export const REFRESH_MS = 5000;
/** After the panel is resized, ask for a plot of the new width at most this often. */
const RESIZE_MS = 1000;
/** A width change smaller than this keeps the plot (it scales). */
const RESIZE_STEP = 40;
const MIN_WIDTH = 320;

const SVG_NS = 'http://www.w3.org/2000/svg';
/** What nbmonitor.plot draws; anything else in the SVG is dropped. */
const DRAWN = new Set([
  'svg',
  'title',
  'desc',
  'metadata',
  'g',
  'path',
  'polyline',
  'line',
  'rect',
  'text',
  'tspan'
]);

/** The attributes it draws with (and data-*): no event handlers, links or styles. */
const ATTRIBUTES = new Set([
  'class',
  'role',
  'width',
  'height',
  'viewBox',
  'x',
  'y',
  'x1',
  'x2',
  'y1',
  'y2',
  'dy',
  'd',
  'points',
  'fill',
  'fill-opacity',
  'stroke',
  'stroke-width',
  'stroke-dasharray',
  'font-family',
  'font-size',
  'font-weight',
  'text-anchor'
]);
/** A colour function is the only one it draws with; no url(), which could fetch from anywhere. */
const PLAIN_VALUE = /^(?:[^()\\]*|rgba?\([\d.,\s%]*\))$/;

/** The body of a usage answer, or a cell's usage output. */
export interface IUsage {
  svg: string;
  /** "peak memory 3.2 GB (most: DataLoader worker 2, 1.9 GB)", one per resource seen */
  peaks: string[];
  /** Damaged lines of the history that were left out. */
  skipped: number;
  /**
   * The read-out's columns as JSON text, given beside the SVG (a cell's
   * output); when absent, the SVG's own (the server's answer embeds them).
   */
  columns?: string;
}

/** A value per column, or null where the process was not there. */
type Series = (number | null)[];

/** The columns plot.py draws for a read-out: per process (by number), a value per column. */
interface IColumns {
  x: number[];
  t: number[];
  cpu: Map<string, Series>;
  memory: Map<string, Series>;
  gpu: Map<string, Series>;
}

function div(className: string, text?: string): HTMLElement {
  const node = document.createElement('div');
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** ``0.4 s``, ``12 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``: nbmonitor's _format.duration. */
export function duration(seconds: number): string {
  const s = Math.max(0, seconds);
  if (s < 10) {
    return `${s.toFixed(1)} s`;
  }
  const whole = Math.floor(s);
  if (whole < 60) {
    return `${whole} s`;
  }
  const [minutes, secs] = [Math.floor(whole / 60), whole % 60];
  if (minutes < 60) {
    return secs ? `${minutes} min ${secs} s` : `${minutes} min`;
  }
  const [hours, mins] = [Math.floor(minutes / 60), minutes % 60];
  if (hours < 24) {
    return mins ? `${hours} h ${mins} min` : `${hours} h`;
  }
  const [days, hrs] = [Math.floor(hours / 24), hours % 24];
  return hrs ? `${days} d ${hrs} h` : `${days} d`;
}

/** ``512 B``, ``3.4 MB``: nbmonitor's _format.human_bytes. */
export function bytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[i]}`;
}

/**
 * The plot's ``<svg>``, parsed as SVG and imported into this document with
 * only what plot.py draws: its elements and attributes with plain values; no
 * scripts, no event handler attributes, no links, no styles, no url(). Null
 * when the text is no SVG. A notebook's output is as safe to show this way as
 * our server's answer, whoever wrote the notebook.
 */
/**
 * GET nbmonitor/api/runs/<id>/<what> (the run itself when `what` is empty): the answer, and its JSON body (empty when it has none,
 * as an error page may); the body is unchecked, for the caller to check.
 */
export async function getRun(
  settings: ServerConnection.ISettings,
  id: string,
  what: string,
  query: Record<string, string>
): Promise<{ response: Response; body: Record<string, unknown> }> {
  const url =
    URLExt.join(
      settings.baseUrl,
      'nbmonitor',
      'api',
      'runs',
      encodeURIComponent(id),
      ...(what ? [what] : [])
    ) + URLExt.objectToQueryString(query);
  const response = await ServerConnection.makeRequest(url, {}, settings);
  const body = (await response.json().catch(() => ({}))) as Record<
    string,
    unknown
  >;
  return { response, body };
}

export function adoptSvg(text: string): SVGSVGElement | null {
  const parsed = new DOMParser().parseFromString(text, 'image/svg+xml');
  const root = parsed.documentElement;
  if (
    root.namespaceURI !== SVG_NS ||
    root.localName !== 'svg' ||
    parsed.getElementsByTagName('parsererror').length > 0
  ) {
    return null;
  }
  for (const node of Array.from(root.querySelectorAll('*'))) {
    if (node.namespaceURI !== SVG_NS || !DRAWN.has(node.localName)) {
      node.remove();
    }
  }
  for (const node of [root, ...Array.from(root.querySelectorAll('*'))]) {
    for (const attr of Array.from(node.attributes)) {
      const kept =
        attr.namespaceURI === null &&
        (ATTRIBUTES.has(attr.localName) ||
          /^data-[a-z-]+$/.test(attr.localName)) &&
        PLAIN_VALUE.test(attr.value);
      if (!kept) {
        node.removeAttributeNode(attr);
      }
    }
  }
  return document.importNode(root, true) as unknown as SVGSVGElement;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** ``value`` if it is ``length`` finite numbers (or nulls, where ``gaps``), else null. */
function numbers(value: unknown, length: number, gaps: boolean): Series | null {
  const ok =
    Array.isArray(value) &&
    value.length === length &&
    value.every(
      v => (typeof v === 'number' && Number.isFinite(v)) || (gaps && v === null)
    );
  return ok ? (value as Series) : null;
}

/** Per process, ``length`` values each; null if any is not. */
function series(value: unknown, length: number): Map<string, Series> | null {
  if (!isRecord(value)) {
    return null;
  }
  const out = new Map<string, Series>();
  for (const [proc, values] of Object.entries(value)) {
    const checked = numbers(values, length, true);
    if (checked === null) {
      return null;
    }
    out.set(proc, checked);
  }
  return out;
}

/**
 * The columns in ``text`` (JSON, from a notebook anyone may have written), or
 * null, and so no read-out, unless all of them are what plot.py writes.
 */
function parseColumns(text: string): IColumns | null {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isRecord(data) || !Array.isArray(data.x)) {
    return null;
  }
  const length = data.x.length;
  const x = numbers(data.x, length, false);
  const t = numbers(data.t, length, false);
  const cpu = series(data.cpu, length);
  const memory = series(data.memory, length);
  const gpu = series(data.gpu, length);
  if (!x || !t || !cpu || !memory || !gpu) {
    return null;
  }
  return { x: x as number[], t: t as number[], cpu, memory, gpu };
}

/** ``value`` as a usage plot's body (the server's answer, a notebook's output), or null. */
export function asUsage(value: unknown): IUsage | null {
  const usage = value as Partial<IUsage> | null;
  if (
    typeof usage !== 'object' ||
    usage === null ||
    typeof usage.svg !== 'string'
  ) {
    return null;
  }
  return {
    svg: usage.svg,
    peaks: Array.isArray(usage.peaks)
      ? usage.peaks.filter((line): line is string => typeof line === 'string')
      : [],
    skipped: typeof usage.skipped === 'number' ? usage.skipped : 0,
    columns: typeof usage.columns === 'string' ? usage.columns : undefined
  };
}

/**
 * A usage plot as people see it, in the panel (UsageView) and in a notebook's
 * output (./output.ts): the peak lines, a note, the plot, a legend that hides
 * and shows processes, and a read-out of the nearest column under the
 * pointer. A newer plot given to show() keeps what the legend hid, the key
 * that had the keyboard focus, and the read-out where the pointer is.
 */
export class UsageChart {
  readonly node = div('nbm-usage-chart');
  private _peaks = div('nbm-usage-peaks');
  private _note = div('nbm-usage-note');
  private _plot = div('nbm-usage-plot');
  private _tip = div('nbm-usage-tip');
  /** Processes the legend has hidden: kept across redraws. */
  private _hidden = new Set<string>();
  private _svg: SVGSVGElement | null = null;
  /** Where the pointer is over the plot (client coordinates), to read out again after a redraw. */
  private _pointer: { x: number; y: number } | null = null;

  constructor(note = '') {
    this._note.textContent = note;
    this._tip.setAttribute('aria-hidden', 'true');
    this._plot.appendChild(this._tip);
    this.node.append(this._peaks, this._note, this._plot);
  }

  /**
   * Draws ``usage``; false (and nothing changed) when its SVG is no plot. The
   * read-out's columns are ``usage.columns`` or else the SVG's own; columns
   * that are not plot.py's give no read-out, and the plot is still drawn.
   */
  show(usage: IUsage): boolean {
    const svg = adoptSvg(usage.svg);
    if (svg === null) {
      return false;
    }
    this._peaks.replaceChildren(
      ...usage.peaks.map(line => div('nbm-detail', line))
    );
    this._note.classList.remove('nbm-usage-problem');
    this._note.textContent =
      usage.skipped > 0
        ? `${usage.skipped} damaged line(s) of the history were left out.`
        : '';
    this._tip.style.display = 'none';
    // A legend key with the keyboard focus has it again in the new plot (one clicked with the
    // mouse does not: it would show a focus ring it never had).
    const active = document.activeElement;
    const focused =
      active && this._svg?.contains(active) && active.matches(':focus-visible')
        ? active.closest('.nbm-key')?.getAttribute('data-proc')
        : null;
    const old = this._svg;
    this._svg = svg;
    this._plot.insertBefore(svg, old ?? this._tip);
    const { names, colours } = this._wireLegend(svg);
    if (focused) {
      // While the old key still has it: the focus moves without a stop on the page's body.
      svg
        .querySelector<SVGGElement>(
          `.nbm-key[data-proc="${CSS.escape(focused)}"]`
        )
        ?.focus({ preventScroll: true });
    }
    old?.remove();
    const columns = parseColumns(
      usage.columns ?? svg.querySelector('metadata.nbm-data')?.textContent ?? ''
    );
    this._wirePointer(svg, columns, names, colours);
    return true;
  }

  /** Says what went wrong; a plot already shown stays, as it was. */
  problem(message: string): void {
    this._note.textContent =
      this._svg === null ? message : `not refreshed: ${message}`;
    this._note.classList.add('nbm-usage-problem');
  }

  /** The legend's keys hide and show their process (by click, Enter or Space). */
  private _wireLegend(svg: SVGSVGElement): {
    names: Map<string, string>;
    colours: Map<string, string>;
  } {
    const names = new Map<string, string>();
    const colours = new Map<string, string>();
    for (const key of Array.from(
      svg.querySelectorAll<SVGGElement>('.nbm-key')
    )) {
      const proc = key.dataset.proc ?? '';
      names.set(proc, key.querySelector('title')?.textContent ?? proc);
      colours.set(proc, key.querySelector('rect')?.getAttribute('fill') ?? '');
      key.setAttribute('tabindex', '0');
      key.setAttribute('role', 'checkbox');
      key.setAttribute('aria-label', `show ${names.get(proc)}`);
      const toggle = () => {
        if (!this._hidden.delete(proc)) {
          this._hidden.add(proc);
        }
        this._apply(svg, proc);
      };
      key.addEventListener('click', toggle);
      // A click toggles without taking the focus: no focus ring for the mouse, only for the keyboard.
      key.addEventListener('mousedown', event => event.preventDefault());
      key.addEventListener('keydown', event => {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          // Not also a notebook's shortcut (Enter edits the cell).
          event.stopPropagation();
          toggle();
        }
      });
      this._apply(svg, proc);
    }
    return { names, colours };
  }

  /** The pointer reads out a column; where it already is, at once. */
  private _wirePointer(
    svg: SVGSVGElement,
    data: IColumns | null,
    names: Map<string, string>,
    colours: Map<string, string>
  ): void {
    if (data === null || data.x.length === 0) {
      this._pointer = null;
      return;
    }
    const readOut = () => this._readOut(svg, data, names, colours);
    svg.addEventListener('mousemove', event => {
      this._pointer = { x: event.clientX, y: event.clientY };
      readOut();
    });
    svg.addEventListener('mouseleave', () => {
      this._pointer = null;
      this._tip.style.display = 'none';
    });
    if (this._pointer !== null) {
      readOut();
    }
  }

  private _apply(svg: SVGSVGElement, proc: string): void {
    const off = this._hidden.has(proc);
    const key = svg.querySelector<SVGGElement>(
      `.nbm-key[data-proc="${CSS.escape(proc)}"]`
    );
    key?.classList.toggle('nbm-off', off);
    key?.setAttribute('aria-checked', String(!off));
    for (const series of Array.from(
      svg.querySelectorAll<SVGElement>(
        `.nbm-series[data-proc="${CSS.escape(proc)}"]`
      )
    )) {
      series.style.display = off ? 'none' : '';
    }
  }

  /** Time and each shown process's values at the column nearest the pointer. */
  private _readOut(
    svg: SVGSVGElement,
    data: IColumns,
    names: Map<string, string>,
    colours: Map<string, string>
  ): void {
    const box = svg.getBoundingClientRect();
    const pointer = this._pointer;
    if (
      pointer === null ||
      pointer.x < box.left ||
      pointer.x > box.right ||
      pointer.y < box.top ||
      pointer.y > box.bottom
    ) {
      // Redrawn while the pointer is elsewhere (the page scrolled, the plot is smaller).
      this._pointer = null;
      this._tip.style.display = 'none';
      return;
    }
    const scale = svg.viewBox.baseVal.width / (box.width || 1);
    const px = (pointer.x - box.left) * scale;
    let best = 0;
    data.x.forEach((x, i) => {
      if (Math.abs(x - px) < Math.abs(data.x[best] - px)) {
        best = i;
      }
    });
    const table = document.createElement('table');
    const withGpu = Array.from(data.gpu.values()).some(v => v[best]);
    const header = table.createTHead().insertRow();
    for (const name of ['', 'CPU', 'memory', ...(withGpu ? ['GPU'] : [])]) {
      header.appendChild(document.createElement('th')).textContent = name;
    }
    const body = table.createTBody();
    for (const [proc, values] of data.cpu) {
      const cpu = values[best];
      if (typeof cpu !== 'number' || this._hidden.has(proc)) {
        continue;
      }
      const row = body.insertRow();
      const swatch = document.createElement('span');
      swatch.className = 'nbm-usage-swatch';
      const colour = colours.get(proc) ?? '';
      if (/^#[0-9a-f]{3,8}$/i.test(colour)) {
        swatch.style.background = colour;
      }
      const who = row.insertCell().appendChild(div('nbm-usage-who'));
      who.append(swatch, names.get(proc) ?? proc);
      row.insertCell().textContent = `${cpu.toFixed(0)}%`;
      row.insertCell().textContent = bytes(data.memory.get(proc)?.[best] ?? 0);
      if (withGpu) {
        const gpu = data.gpu.get(proc)?.[best];
        row.insertCell().textContent = gpu ? bytes(gpu) : '';
      }
    }
    this._tip.replaceChildren(div('', `at ${duration(data.t[best])}`), table);
    this._tip.style.display = 'block';
    // Beside the pointer, on whichever side keeps it inside the plot (over it when neither does):
    // a cell's output scrolls what sticks out of it.
    const area = this._plot.getBoundingClientRect();
    const x = pointer.x - area.left;
    const y = pointer.y - area.top;
    const [wide, high] = [this._tip.offsetWidth, this._tip.offsetHeight];
    const left =
      x + 14 + wide <= area.width
        ? x + 14
        : Math.max(0, Math.min(x - 14 - wide, area.width - wide));
    const top =
      y + 14 + high <= area.height
        ? y + 14
        : Math.max(0, Math.min(y - 14 - high, area.height - high));
    this._tip.style.left = `${left}px`;
    this._tip.style.top = `${top}px`;
  }
}

/** The plot of one run or group, fetched when opened and refreshed while it runs. */
export class UsageView {
  readonly node = div('nbm-usage-view');
  private _chart = new UsageChart('loading usage…');
  private _fetchedAt = 0;
  private _width = 0;
  private _loading = false;
  /** Whether the run was running when the shown plot was fetched: then it needs another look. */
  private _unfinished = true;
  private _active = true;
  private _disposed = false;

  constructor(
    readonly id: string,
    private _settings: ServerConnection.ISettings
  ) {
    this.node.id = `nbm-usage-${id}`;
    this.node.dataset.key = id; // the panel keeps it as it redraws the row
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'usage per process');
    // The row's tooltip says a click opens the notebook; not here.
    this.node.title = '';
    // A click in the plot is for the legend, not the row (which opens the notebook).
    this.node.addEventListener('click', event => event.stopPropagation());
    this.node.appendChild(this._chart.node);
  }

  dispose(): void {
    this._disposed = true;
    this.node.remove();
  }

  /**
   * Called after each look at the runs (every few seconds, none while the
   * tab is hidden): fetches the plot when it is new, when the run was still
   * running at the last fetch (at most every REFRESH_MS), or when the panel's
   * width changed enough to draw it again.
   */
  update(active: boolean): void {
    this._active = active;
    const width = Math.max(MIN_WIDTH, Math.floor(this.node.clientWidth));
    const resized =
      this._width > 0 &&
      this.node.clientWidth > 0 &&
      Math.abs(width - this._width) >= RESIZE_STEP;
    const since = Date.now() - this._fetchedAt;
    const due =
      this._fetchedAt === 0 ||
      (this._unfinished && since >= REFRESH_MS) ||
      (resized && since >= RESIZE_MS);
    if (due && !this._loading && !this._disposed) {
      void this._fetch(width);
    }
  }

  private async _fetch(width: number): Promise<void> {
    this._loading = true;
    const active = this._active;
    try {
      const { response, body } = await getRun(
        this._settings,
        this.id,
        'usage',
        {
          width: String(width)
        }
      );
      if (this._disposed) {
        return;
      }
      const usage = response.ok ? asUsage(body) : null;
      if (usage === null) {
        this._chart.problem(
          typeof body.message === 'string'
            ? body.message
            : `HTTP ${response.status}`
        );
      } else if (!this._chart.show(usage)) {
        this._chart.problem('the server sent no usage plot');
      }
    } catch (reason) {
      this._chart.problem(`the server does not answer (${reason})`);
    } finally {
      this._loading = false;
      this._fetchedAt = Date.now();
      this._width = width;
      this._unfinished = active;
    }
  }
}

/**
 * A run's usage plot under its row in the Runs panel: the SVG that
 * nbmonitor.plot draws (server: nbmonitor/api/runs/<id>/usage), the peak lines
 * above it, a legend that hides and shows processes, and a read-out of the
 * nearest column under the pointer (what plot.py's HTML page does, here in
 * TypeScript).
 *
 * The SVG comes from our own server, but it is still parsed as SVG and only
 * the elements the plot draws are adopted: nothing of it is ever set as HTML,
 * and every text built here is set with textContent.
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

/** The body of a usage answer. */
export interface IUsage {
  svg: string;
  /** "peak memory 3.2 GB (most: DataLoader worker 2, 1.9 GB)", one per resource seen */
  peaks: string[];
  /** Damaged lines of the history that were left out. */
  skipped: number;
}

/** The columns plot.py embeds for a read-out: per process (by number), a value per column. */
interface IColumns {
  x: number[];
  t: number[];
  cpu: Record<string, (number | null)[]>;
  memory: Record<string, (number | null)[]>;
  gpu: Record<string, (number | null)[]>;
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
 * only what plot.py draws: no scripts, no event handler attributes, no links,
 * no styles. Null when the text is no SVG.
 */
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
      const name = attr.localName.toLowerCase();
      if (name.startsWith('on') || name === 'href' || name === 'style') {
        node.removeAttributeNode(attr);
      }
    }
  }
  return document.importNode(root, true) as unknown as SVGSVGElement;
}

function columns(svg: SVGSVGElement): IColumns | null {
  const meta = svg.querySelector('metadata.nbm-data');
  if (!meta?.textContent) {
    return null;
  }
  try {
    const data = JSON.parse(meta.textContent) as IColumns;
    return Array.isArray(data.x) && Array.isArray(data.t) ? data : null;
  } catch {
    return null; // no read-out; the plot itself is still worth showing
  }
}

/** The plot of one run or group, fetched when opened and refreshed while it runs. */
export class UsageView {
  readonly node = div('nbm-usage-view');
  private _peaks = div('nbm-usage-peaks');
  private _note = div('nbm-usage-note');
  private _plot = div('nbm-usage-plot');
  private _tip = div('nbm-usage-tip');
  /** Processes the legend has hidden: kept across refreshes. */
  private _hidden = new Set<string>();
  private _svg: SVGSVGElement | null = null;
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
    this._note.textContent = 'loading usage…';
    this._tip.setAttribute('aria-hidden', 'true');
    this._plot.appendChild(this._tip);
    this.node.append(this._peaks, this._note, this._plot);
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
    const url =
      URLExt.join(
        this._settings.baseUrl,
        'nbmonitor',
        'api',
        'runs',
        encodeURIComponent(this.id),
        'usage'
      ) + URLExt.objectToQueryString({ width: String(width) });
    try {
      const response = await ServerConnection.makeRequest(
        url,
        {},
        this._settings
      );
      const body = (await response.json().catch(() => ({}))) as Partial<
        IUsage & { message: string }
      >;
      if (this._disposed) {
        return;
      }
      if (!response.ok || typeof body.svg !== 'string') {
        this._problem(body.message ?? `HTTP ${response.status}`);
      } else {
        this._show(body as IUsage);
      }
    } catch (reason) {
      this._problem(`the server does not answer (${reason})`);
    } finally {
      this._loading = false;
      this._fetchedAt = Date.now();
      this._width = width;
      this._unfinished = active;
    }
  }

  /** Says what went wrong; a plot already shown stays, as it was. */
  private _problem(message: string): void {
    this._note.textContent =
      this._svg === null ? message : `not refreshed: ${message}`;
    this._note.classList.add('nbm-usage-problem');
  }

  private _show(usage: IUsage): void {
    const svg = adoptSvg(usage.svg);
    if (svg === null) {
      this._problem('the server sent no usage plot');
      return;
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
    // A legend key with the keyboard focus has it again in the new plot.
    const focused = this._svg?.contains(document.activeElement)
      ? document.activeElement?.closest('.nbm-key')?.getAttribute('data-proc')
      : null;
    this._svg?.remove();
    this._svg = svg;
    this._plot.insertBefore(svg, this._tip);
    this._wire(svg);
    if (focused) {
      svg
        .querySelector<SVGGElement>(
          `.nbm-key[data-proc="${CSS.escape(focused)}"]`
        )
        ?.focus();
    }
  }

  /** The legend's keys hide and show their process (by click, Enter or Space); the pointer reads out a column. */
  private _wire(svg: SVGSVGElement): void {
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
      key.addEventListener('keydown', event => {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          toggle();
        }
      });
      this._apply(svg, proc);
    }
    const data = columns(svg);
    if (data === null || data.x.length === 0) {
      return;
    }
    svg.addEventListener('mousemove', event =>
      this._readOut(svg, data, names, colours, event)
    );
    svg.addEventListener('mouseleave', () => {
      this._tip.style.display = 'none';
    });
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
    colours: Map<string, string>,
    event: MouseEvent
  ): void {
    const box = svg.getBoundingClientRect();
    const scale = svg.viewBox.baseVal.width / (box.width || 1);
    const px = (event.clientX - box.left) * scale;
    let best = 0;
    data.x.forEach((x, i) => {
      if (Math.abs(x - px) < Math.abs(data.x[best] - px)) {
        best = i;
      }
    });
    const table = document.createElement('table');
    const withGpu = Object.values(data.gpu).some(v => v[best]);
    const header = table.createTHead().insertRow();
    for (const name of ['', 'CPU', 'memory', ...(withGpu ? ['GPU'] : [])]) {
      header.appendChild(document.createElement('th')).textContent = name;
    }
    const body = table.createTBody();
    for (const proc of Object.keys(data.cpu)) {
      const cpu = data.cpu[proc][best];
      if (cpu === null || this._hidden.has(proc)) {
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
      row.insertCell().textContent = bytes(data.memory[proc]?.[best] ?? 0);
      if (withGpu) {
        const gpu = data.gpu[proc]?.[best];
        row.insertCell().textContent = gpu ? bytes(gpu) : '';
      }
    }
    this._tip.replaceChildren(div('', `at ${duration(data.t[best])}`), table);
    this._tip.style.display = 'block';
    // Beside the pointer, on whichever side keeps it inside the plot (over it when neither does).
    const area = this._plot.getBoundingClientRect();
    const x = event.clientX - area.left;
    const y = event.clientY - area.top;
    const wide = this._tip.offsetWidth;
    const left =
      x + 14 + wide <= area.width
        ? x + 14
        : Math.max(0, Math.min(x - 14 - wide, area.width - wide));
    this._tip.style.left = `${left}px`;
    this._tip.style.top = `${y + 14}px`;
  }
}

/**
 * A watched cell's display: nbmonitor.widget.RUN_MIME, the run's View as
 * JSON, drawn as one line like tqdm's (state, name, bar, members, progress,
 * rate, time, usage chips, and what is late) with the run's story under it
 * on a click: where it is stuck, incidents, members, the usage plot and the
 * log tail (these two from the Jupyter server, fetched only while open).
 *
 * The kernel sends a new bundle at least every few seconds while the run
 * runs; JupyterLab hands each to the same renderer, so an open story stays
 * open. When no bundle came for STALE_MS, the kernel may be dead: the
 * renderer asks the server how the run is (a watcher or the server itself
 * judged it by its process), and shows that, or, for a run the server does
 * not know, when its kernel last spoke. A display never claims "running"
 * for a run that is gone.
 */
import { ServerConnection } from '@jupyterlab/services';
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { LogsView, oneLine } from './logs';
import { getRun, UsageView } from './usage';

/** nbmonitor.widget.RUN_MIME */
export const RUN_MIME = 'application/vnd.nbmonitor.run+json';
/** No bundle for this long while running (the kernel sends one at least every 5 s): it may be gone. */
const STALE_MS = 10000;
/** How often a silent display asks the server about its run. */
const CHECK_MS = 2000;
const ACTIVE = new Set(['running', 'late', 'stalled']);
const GONE_COLOUR = '#757575';

interface IMemberShown {
  label: string;
  share: number;
  state: string;
  colour: string;
  straggler: boolean;
  text: string;
}

interface IStory {
  attempt: string;
  error: string;
  stuck: string;
  incidents: string[];
  members: string[];
  promise: string;
  usage: string[];
  watcher: string;
  note: string;
}

/** The payload, as nbmonitor.widget.payload writes it; checked, as a notebook may hold anything. */
export interface IRunShown {
  id: string;
  name: string;
  state: string;
  colour: string;
  ended: boolean;
  share: number | null;
  progress: string;
  rate: string;
  time: string;
  late: string;
  chips: [string, string][];
  members: IMemberShown[];
  straggler: string;
  /** What the line ends with: what is late, else "slowest: rank 1". */
  note: string;
  story: IStory;
  sent_at: number;
}

function text(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

function texts(value: unknown): string[] {
  return Array.isArray(value) ? value.filter(v => typeof v === 'string') : [];
}

function share(value: unknown): number | null {
  return typeof value === 'number' && isFinite(value)
    ? Math.max(0, Math.min(1, value))
    : null;
}

/** A colour as plot.py and widget.py write them; anything else is grey. */
function colour(value: unknown): string {
  const found = text(value);
  return /^#[0-9a-fA-F]{6}$/.test(found) ? found : GONE_COLOUR;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The payload read defensively: wrong types become empty, never markup. */
export function asRunShown(value: unknown): IRunShown | null {
  if (!isRecord(value) || typeof value.name !== 'string') {
    return null;
  }
  const story = isRecord(value.story) ? value.story : {};
  return {
    id: text(value.id),
    name: value.name,
    state: text(value.state) || 'running',
    colour: colour(value.colour),
    ended: value.ended === true,
    share: share(value.share),
    progress: text(value.progress),
    rate: text(value.rate),
    time: text(value.time),
    late: text(value.late),
    chips: (Array.isArray(value.chips) ? value.chips : [])
      .filter(c => Array.isArray(c) && c.length === 2)
      .map(c => [text(c[0]), text(c[1])] as [string, string]),
    members: (Array.isArray(value.members) ? value.members : [])
      .filter(isRecord)
      .map(m => ({
        label: text(m.label),
        share: share(m.share) ?? 0,
        state: text(m.state),
        colour: colour(m.colour),
        straggler: m.straggler === true,
        text: text(m.text)
      })),
    straggler: text(value.straggler),
    note: text(value.note),
    story: {
      attempt: text(story.attempt),
      error: text(story.error),
      stuck: text(story.stuck),
      incidents: texts(story.incidents),
      members: texts(story.members),
      promise: text(story.promise),
      usage: texts(story.usage),
      watcher: text(story.watcher),
      note: text(story.note)
    },
    sent_at: typeof value.sent_at === 'number' ? value.sent_at : 0
  };
}

function span(className: string, content = ''): HTMLElement {
  const node = document.createElement('span');
  node.className = className;
  node.textContent = oneLine(content);
  return node;
}

function div(className: string, content = ''): HTMLElement {
  const node = document.createElement('div');
  node.className = className;
  node.textContent = oneLine(content);
  return node;
}

function clock(seconds: number): string {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

/** What the server says of a run whose kernel fell silent. */
interface IVerdict {
  status: string;
  colour: string;
  error: string;
}

/** One watched cell's display, drawn again with each bundle the kernel sends. */
export class RunOutput extends Widget implements IRenderMime.IRenderer {
  private _line = div('nbm-line');
  private _story = div('nbm-story');
  private _incidents = div('nbm-incidents');
  private _shown: IRunShown | null = null;
  private _open = false;
  private _heardAt = 0;
  private _timer = 0;
  private _asking = false;
  private _verdict: IVerdict | null = null;
  private _unknown = false;
  private _usage: UsageView | null = null;
  private _logs: LogsView | null = null;
  private _settings = ServerConnection.makeSettings();

  constructor(private _mimeType: string) {
    super();
    this.addClass('nbm-run-output');
    this._line.setAttribute('role', 'button');
    this._line.tabIndex = 0;
    this._line.setAttribute('aria-expanded', 'false');
    this._line.addEventListener('click', () => this._toggle());
    this._line.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        this._toggle();
      }
    });
    this._story.hidden = true;
    this.node.append(this._line, this._incidents, this._story);
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const shown = asRunShown(model.data[this._mimeType]);
    if (shown === null) {
      this._line.replaceChildren(
        span('nbm-note', 'this output holds no run nbmonitor can show')
      );
      return;
    }
    const first = this._heardAt === 0;
    this._shown = shown;
    this._heardAt = Date.now();
    // A notebook opened long after it ran: its last bundle is old news at once.
    if (first && shown.sent_at > 0) {
      this._heardAt = Math.min(this._heardAt, shown.sent_at * 1000);
    }
    if (shown.ended) {
      this._verdict = null;
      this._unknown = false;
    }
    this._draw();
    this._watchSilence();
  }

  dispose(): void {
    this._stopWatching();
    this._usage?.dispose();
    this._logs?.dispose();
    super.dispose();
  }

  /** Whether the kernel stopped sending while the run was running. */
  get silent(): boolean {
    return (
      this._shown !== null &&
      !this._shown.ended &&
      Date.now() - this._heardAt >= STALE_MS
    );
  }

  /** While the run runs, look every CHECK_MS whether its kernel fell silent. */
  private _watchSilence(): void {
    if (this._shown === null || this._shown.ended) {
      this._stopWatching();
      return;
    }
    if (this._timer === 0) {
      this._timer = window.setInterval(() => {
        if (this.silent) {
          void this._ask();
        }
      }, CHECK_MS);
    }
    if (this.silent) {
      void this._ask();
    }
  }

  private _stopWatching(): void {
    window.clearInterval(this._timer);
    this._timer = 0;
  }

  /** Ask the server how the run is, now that its kernel is silent. */
  private async _ask(): Promise<void> {
    const shown = this._shown;
    if (this._asking || shown === null || !shown.id || this.isDisposed) {
      return;
    }
    this._asking = true;
    try {
      const { response, body } = await getRun(this._settings, shown.id, '', {});
      if (response.ok && typeof body.status === 'string') {
        this._verdict = {
          status: body.status,
          colour: colour(body.colour),
          error: text(body.error)
        };
        this._unknown = false;
        if (!ACTIVE.has(body.status)) {
          this._stopWatching(); // ended for good: nothing more to learn
        }
      } else {
        this._verdict = null;
        this._unknown = true;
      }
    } catch {
      this._unknown = true;
    } finally {
      this._asking = false;
    }
    if (!this.isDisposed) {
      this._draw();
    }
  }

  private _toggle(): void {
    this._open = !this._open;
    this._line.setAttribute('aria-expanded', String(this._open));
    this.node.classList.toggle('nbm-open', this._open);
    this._story.hidden = !this._open;
    if (!this._open) {
      // Closed, it costs nothing: no plot or log tail is fetched.
      this._usage?.dispose();
      this._logs?.dispose();
      this._usage = this._logs = null;
    }
    this._draw();
  }

  private _draw(): void {
    const shown = this._shown;
    if (shown === null) {
      return;
    }
    const verdict = this.silent ? this._verdict : null;
    const ended = verdict !== null && !ACTIVE.has(verdict.status);
    const state = verdict ? verdict.status : shown.state;
    this.node.dataset.state = state;
    this.node.dataset.silent = String(this.silent);
    const badge = span('nbm-badge', state);
    badge.style.background =
      this.silent && this._unknown
        ? GONE_COLOUR
        : (verdict?.colour ?? shown.colour);
    const parts: HTMLElement[] = [
      span('nbm-chevron', this._open ? '▾' : '▸'),
      badge,
      span('nbm-name', shown.name)
    ];
    parts[2].title = shown.name;
    if (shown.share !== null) {
      const bar = span('nbm-bar');
      const fill = bar.appendChild(span('nbm-fill'));
      fill.style.width = `${(shown.share * 100).toFixed(1)}%`;
      fill.style.background = verdict?.colour ?? shown.colour;
      parts.push(bar);
    }
    if (shown.members.length) {
      const strip = span('nbm-strip');
      for (const member of shown.members) {
        const cell = strip.appendChild(span('nbm-member'));
        cell.dataset.state = member.state;
        cell.dataset.straggler = member.straggler ? '1' : '0';
        cell.title = `${member.label}: ${member.text}`;
        const fill = cell.appendChild(span('nbm-fill'));
        fill.style.height = `${Math.round(member.share * 100)}%`;
        fill.style.background = member.colour;
      }
      parts.push(strip);
    }
    parts.push(span('nbm-progress', shown.progress));
    if (!ended) {
      if (shown.rate && !this.silent) {
        parts.push(span('nbm-rate', shown.rate));
      }
      if (shown.time && !this.silent) {
        parts.push(span('nbm-time', shown.time));
      }
    }
    for (const [label, value] of this.silent ? [] : shown.chips) {
      const chip = span('nbm-chip', `${label} ${value}`);
      parts.push(chip);
    }
    const late = this._lateText(shown, verdict);
    if (late) {
      const note = span('nbm-late', late);
      // What is late is said in its state's colour, the straggler in its own; a silent kernel
      // in plain words.
      const slowest = shown.members.find(m => m.straggler);
      const colour = shown.late || !slowest ? shown.colour : slowest.colour;
      note.style.color = this.silent ? '' : colour;
      parts.push(note);
    }
    this._line.replaceChildren(...parts);
    this._line.title = this._open ? 'hide the story' : 'show the story';
    const incidents = shown.ended ? shown.story.incidents : [];
    this._incidents.textContent = oneLine(incidents.join(' · '));
    this._incidents.hidden = incidents.length === 0;
    if (this._open) {
      this._drawStory(shown, verdict);
    }
  }

  private _lateText(shown: IRunShown, verdict: IVerdict | null): string {
    if (this.silent) {
      const at = clock(this._heardAt / 1000);
      const since = `no word from its kernel since ${at}`;
      if (verdict !== null && verdict.status === 'crashed') {
        return `its kernel died · last word at ${at}`;
      }
      if (verdict !== null && !ACTIVE.has(verdict.status)) {
        return `${verdict.error ? oneLine(verdict.error) : verdict.status} · last word at ${at}`;
      }
      if (verdict !== null) {
        return `${since}; the server sees it ${verdict.status}`;
      }
      return this._unknown ? `${since}; it may have ended` : since;
    }
    return shown.note;
  }

  private _drawStory(shown: IRunShown, verdict: IVerdict | null): void {
    const story = shown.story;
    const rows: HTMLElement[] = [];
    const add = (className: string, content: string): void => {
      if (content) {
        rows.push(div(className, content));
      }
    };
    if (verdict !== null && verdict.error) {
      add('nbm-error', verdict.error);
    }
    add('nbm-attempt', story.attempt);
    add('nbm-error', story.error);
    if (story.stuck) {
      add('nbm-stuck', `stuck in ${story.stuck}`);
    }
    for (const incident of story.incidents) {
      add('nbm-incident', incident);
    }
    for (const member of story.members) {
      add('nbm-member-line', member);
    }
    add('nbm-promise', story.promise);
    for (const line of story.usage) {
      add('nbm-usage-line', line);
    }
    add('nbm-quiet', story.watcher);
    add('nbm-quiet', story.note);
    // The plot and the log tail live in the server's repo: asked for only while open.
    const active = !shown.ended && !(verdict && !ACTIVE.has(verdict.status));
    if (shown.id) {
      this._usage ??= new UsageView(shown.id, this._settings);
      this._logs ??= new LogsView(shown.id, this._settings);
      this._usage.update(active);
      this._logs.update(active);
      rows.push(this._usage.node, this._logs.node);
    }
    this._story.replaceChildren(...rows);
  }
}

export const runRendererFactory: IRenderMime.IRendererFactory = {
  // Safe, so an untrusted notebook (one opened, not run here) shows it too: every value is
  // read as a number or set as text, and a colour must look like #rrggbb.
  safe: true,
  mimeTypes: [RUN_MIME],
  // Before text/html (50): JupyterLab draws this; other front ends show the HTML.
  defaultRank: 40,
  createRenderer: options => new RunOutput(options.mimeType)
};

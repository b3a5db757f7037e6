/**
 * nbmonitor in JupyterLab: a "Runs" panel in the left sidebar, a status bar
 * item, and a notification when a run stalls, crashes or fails. A group (the
 * ranks of one torchrun, SLURM or MPI job) is one row with its members under
 * it, the ones to blame marked; a run's multiprocessing workers are listed
 * under it.
 *
 * A click on a run's (or a group's) name opens its usage plot under the row
 * (./usage.ts); a click elsewhere on the row opens its notebook. A late or
 * stalled run says where its thread is stuck, in a line under the row, and
 * its opened details list the frames of that stack.
 *
 * The status bar is red while a stall, crash or failure is news: opening the
 * panel while it is listed acknowledges it (kept in the browser's storage).
 *
 * It polls the server extension's REST API (nbmonitor/api/runs) every two
 * seconds with Lumino's Poll, asking only for what changed since its last
 * answer (its cursor), so ended runs are sent once: backing off while the server is unreachable
 * (and saying it is offline), standing by while the tab is hidden. Texts a
 * person reads (durations, origins) and state colours come from the server,
 * as the notebook display and the command line show them. User text (run
 * names, origins, errors) is only ever set as text.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { LogsView } from './logs';
import { bytes, duration, UsageView } from './usage';

const POLL_MS = 2000;
const MAX_BACKOFF_MS = 30000;
const PROBLEMS = new Set(['stalled', 'crashed', 'lost', 'failed']);
const ACTIVE = new Set(['running', 'late', 'stalled']);
/** Ended runs and groups the panel loads at a time ("older runs" loads the next page). */
const ENDED_PAGE = 50;
const STUCK = new Set(['late', 'stalled']);
/** A stack older than this is shown with its date, not only its time of day. */
const DAY_S = 20 * 3600;

/** One run as the REST API returns it. */
export interface IRun {
  id: string;
  name: string;
  status: string;
  origin: {
    kind: string;
    path: string | null;
    cell: number | null;
    text: string;
    lab_path: string | null;
  };
  host: string;
  /** Whether it runs on another host than the server's (then its facts name the host). */
  elsewhere: boolean;
  pid: number;
  step: number;
  total: number | null;
  since_progress: number | null;
  /** since_progress as people read it ("4.0 s", "3 min 20 s"), from the server. */
  since_progress_text: string | null;
  /** The state's colour, the same as the notebook display's badge. */
  colour: string;
  eta: number | null;
  error: string | null;
  started_at: number;
  ended_at: number | null;
  last_progress_at: number;
  usage: { cpu_percent: number; rss: number; gpu_memory: number | null } | null;
  /** The torch.distributed call a group member was last seen waiting in. */
  waiting: string | null;
  workers: IWorker[];
  /** Where its thread was when it turned late or stalled; null when never seen stuck. */
  stack: IStack | null;
  /** Which attempt of its job (0: the first), and with its latest checkpoint, as a line
   * ("attempt 2 · resumed from the checkpoint at step 1200, saved 4 min ago"; "" for none). */
  attempt: number;
  attempt_text: string;
}

/** One frame of a run's stack: a code location and its source line. */
export interface IFrame {
  function: string;
  /** The path as the run's Python knows it. */
  file: string;
  line: number;
  /** The source line, stripped; empty when it could not be read. */
  code: string;
}

/** A run's thread's stack, as its process (or py-spy, from outside) read it. */
export interface IStack {
  /** Innermost first. */
  frames: IFrame[];
  /** "late" or "stalled": what the run turned when it was taken. */
  state: string | null;
  /** When it was taken (seconds, wall clock). */
  at: number | null;
  /** "process" (the run's own process) or "py-spy". */
  from: string;
  /** "wait_for_batch (data.py:42) ← train (train.py:88)"; null once it made progress since. */
  stuck_in: string | null;
}

/** A multiprocessing worker that reports progress for a run. */
export interface IWorker {
  name: string;
  pid: number;
  rank: number | null;
  step: number;
  state: string;
  exit: string | null;
  colour: string;
}

/** A member of a group: a run, with whether the group's incident is its doing. */
export interface IMember extends IRun {
  group: { id: string; role: string };
  blamed: boolean;
}

/** The ranks of one job, as one: its state, step and whom to blame. */
export interface IGroup {
  id: string;
  name: string;
  /** "torchrun job 1a2b3c4d…, 8 ranks" */
  label: string;
  status: string;
  colour: string;
  step: number;
  total: number | null;
  since_progress_text: string | null;
  started_at: number;
  /** "rank 5 on node3, pid 812: step 1200, 40 behind the median, ..." */
  blame: string | null;
  problems: string[];
  members: IMember[];
  /** The group's attempt and latest checkpoint, as a line ("" for none). */
  attempt_text: string;
}

const RECENT_S = 3600;

/** Active, or a problem of the last hour: what deserves attention now. */
function current(run: IRun): boolean {
  if (ACTIVE.has(run.status)) {
    return true;
  }
  const at = run.ended_at ?? run.last_progress_at;
  return PROBLEMS.has(run.status) && Date.now() / 1000 - at < RECENT_S;
}

/** A group deserves attention when it is active, or one of its members does. */
function currentGroup(group: IGroup): boolean {
  if (ACTIVE.has(group.status)) {
    return true;
  }
  return PROBLEMS.has(group.status) && group.members.some(current);
}

function el(tag: string, className: string, text?: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text; // never innerHTML: names and errors are user text
  }
  return node;
}

/**
 * Makes ``old`` like ``fresh`` in place: attributes, click handlers and text
 * are brought over, children of the same tag (and the same ``data-key``, if
 * any) are kept and made alike in turn, others replaced. An element of
 * ``fresh`` marked ``data-keep`` keeps whatever stands in its place.
 */
function morph(old: Node, fresh: Node): void {
  if (old instanceof CharacterData) {
    if (old.data !== (fresh as CharacterData).data) {
      old.data = (fresh as CharacterData).data;
    }
    return;
  }
  if (!(old instanceof HTMLElement && fresh instanceof HTMLElement)) {
    return;
  }
  if (fresh.dataset.keep !== undefined) {
    return;
  }
  for (const attr of Array.from(old.attributes)) {
    if (!fresh.hasAttribute(attr.name)) {
      old.removeAttribute(attr.name);
    }
  }
  for (const attr of Array.from(fresh.attributes)) {
    if (old.getAttribute(attr.name) !== attr.value) {
      old.setAttribute(attr.name, attr.value);
    }
  }
  old.onclick = fresh.onclick;
  const before = Array.from(old.childNodes);
  const after = Array.from(fresh.childNodes);
  after.forEach((node, i) => {
    const was = before[i];
    if (was === undefined) {
      old.appendChild(node);
    } else if (
      was.nodeName === node.nodeName &&
      (was as HTMLElement).dataset?.key === (node as HTMLElement).dataset?.key
    ) {
      morph(was, node);
    } else {
      old.replaceChild(node, was);
    }
  });
  for (const gone of before.slice(after.length)) {
    gone.remove();
  }
}

/** What a run's and a group's rows start with. */
interface IHeaded {
  name: string;
  status: string;
  colour: string;
  step: number;
  total: number | null;
  since_progress_text: string | null;
  started_at: number;
  ended_at?: number | null;
}

/** Where a run runs, as a folder (cut with an ellipsis when narrow) and a file name (never cut). */
export interface IWhere {
  folder: string;
  file: string;
}

/**
 * A notebook's path relative to the server's root (else as recorded) split
 * into its folder and its file name with the cell; a script's name and
 * arguments as the server words them.
 */
export function where(run: IRun): IWhere {
  const path = run.origin.lab_path ?? run.origin.path;
  if (run.origin.kind !== 'notebook' || !path) {
    return { folder: '', file: run.origin.text };
  }
  const cut = path.lastIndexOf('/') + 1;
  const cell = run.origin.cell !== null ? `, cell ${run.origin.cell}` : '';
  return { folder: path.slice(0, cut), file: path.slice(cut) + cell };
}

/** The short name a toast gives a run's origin: its notebook's or script's file name. */
function fileOf(run: IRun): string {
  const path = run.origin.path;
  if (
    path &&
    (run.origin.kind === 'notebook' || run.origin.kind === 'script')
  ) {
    return path.slice(path.lastIndexOf('/') + 1);
  }
  return run.origin.text;
}

/** ``14:02``, or ``Nov 20 14:02`` for another day. */
export function clockTime(seconds: number): string {
  const at = new Date(seconds * 1000);
  const time = at.toLocaleTimeString([], {
    hour: '2-digit',
    minute: '2-digit',
    hour12: false
  });
  if (at.toDateString() === new Date().toDateString()) {
    return time;
  }
  const day = at.toLocaleDateString([], { month: 'short', day: 'numeric' });
  return `${day} ${time}`;
}

/** ``started 14:02``, or ``14:02–14:05`` once ended. */
function times(item: IHeaded): string {
  if (item.ended_at === undefined || item.ended_at === null) {
    return `started ${clockTime(item.started_at)}`;
  }
  const start = clockTime(item.started_at);
  const end = clockTime(item.ended_at);
  const sameDay = end.length === 5 || start.slice(0, -5) === end.slice(0, -5);
  return `${start}–${sameDay ? end.slice(-5) : end}`;
}

/**
 * A row's first two lines: dot, name and state; where it runs, its step, its
 * last progress. The name is a button that shows and hides the usage plot.
 */
function head(
  className: string,
  item: IHeaded,
  place: IWhere | string
): HTMLElement {
  const row = el('li', `${className} nbm-status-${item.status}`);
  row.dataset.status = item.status;
  const top = el('div', 'nbm-line');
  const dot = top.appendChild(el('span', 'nbm-dot', '●'));
  const name = top.appendChild(el('button', 'nbm-name nbm-toggle'));
  name.appendChild(el('span', 'nbm-chevron', '▸'));
  name.firstElementChild!.setAttribute('aria-hidden', 'true');
  name.appendChild(document.createTextNode(item.name));
  const state = top.appendChild(el('span', 'nbm-state', item.status));
  dot.style.color = state.style.color = item.colour;
  row.appendChild(top);
  const steps =
    item.total !== null ? `${item.step}/${item.total}` : `${item.step}`;
  const since = item.since_progress_text
    ? ` · last progress ${item.since_progress_text} ago`
    : '';
  const detail = row.appendChild(el('div', 'nbm-detail nbm-where'));
  const at = typeof place === 'string' ? { folder: '', file: place } : place;
  if (at.folder) {
    detail.appendChild(el('span', 'nbm-folder', at.folder)).title = at.folder;
  }
  detail.appendChild(el('span', 'nbm-file', at.file));
  row.appendChild(
    el('div', 'nbm-detail nbm-facts', `step ${steps}${since} · ${times(item)}`)
  );
  return row;
}

const SEEN_KEY = 'nbmonitor:seen';
const SEEN_KEPT = 500;

/** The problems the user has seen (the panel was open while they were listed), by run or group
 * and state, kept across reloads: the status bar is red only for the others. */
class Seen {
  private _keys: string[];
  private _changed = new Signal<this, void>(this);

  constructor() {
    let kept: unknown = [];
    try {
      kept = JSON.parse(window.localStorage.getItem(SEEN_KEY) ?? '[]');
    } catch {
      kept = []; // unreadable: nothing was seen
    }
    this._keys = Array.isArray(kept)
      ? kept.filter(k => typeof k === 'string')
      : [];
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  has(id: string, status: string): boolean {
    return this._keys.includes(`${id}:${status}`);
  }

  /** These were seen now; ``changed`` if any was news. */
  add(items: { id: string; status: string }[]): void {
    const fresh = items
      .map(item => `${item.id}:${item.status}`)
      .filter(key => !this._keys.includes(key));
    if (fresh.length === 0) {
      return;
    }
    this._keys = [...this._keys, ...fresh].slice(-SEEN_KEPT);
    try {
      window.localStorage.setItem(SEEN_KEY, JSON.stringify(this._keys));
    } catch {
      // storage full or refused: seen for this page only
    }
    this._changed.emit();
  }
}

/** The runs the server reports, polled with backoff; ``changed`` after each look. */
class RunsModel {
  runs: IRun[] = [];
  groups: IGroup[] = [];
  offline = false;
  /** Whether older ended runs than those loaded are left on the server (``older()``). */
  more = false;
  /** What is wrong with the repo the server reads (a file in its place, ...), if anything. */
  problem: string | null = null;
  private _changed = new Signal<this, void>(this);
  private _settings = ServerConnection.makeSettings();
  private _poll = new Poll({
    factory: () => this._fetch(),
    frequency: { interval: POLL_MS, backoff: true, max: MAX_BACKOFF_MS },
    name: 'nbmonitor:runs',
    standby: 'when-hidden'
  });

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  /** The next page of ended runs and groups, older than those loaded. */
  async older(): Promise<void> {
    const ended = [...this._runs.values(), ...this._groups.values()].filter(
      entry => !ACTIVE.has(entry.status)
    );
    const before = Math.min(...ended.map(entry => entry.started_at));
    const query = URLExt.objectToQueryString({
      ended: `${ENDED_PAGE}`,
      before: `${Number.isFinite(before) ? before : Date.now() / 1000}`
    });
    const response = await ServerConnection.makeRequest(
      URLExt.join(this._settings.baseUrl, 'nbmonitor', 'api', 'runs') + query,
      {},
      this._settings
    );
    if (!response.ok) {
      return;
    }
    const body = (await response.json()) as {
      runs: IRun[];
      groups: IGroup[];
      more: boolean;
    };
    for (const run of body.runs) {
      this._runs.set(run.id, run);
    }
    for (const group of body.groups) {
      this._groups.set(group.id, group);
    }
    this.more = body.more;
    this._sort();
    this._changed.emit();
  }

  private _sort(): void {
    const newest = (a: { started_at: number }, b: { started_at: number }) =>
      b.started_at - a.started_at;
    this.runs = [...this._runs.values()].sort(newest);
    this.groups = [...this._groups.values()].sort(newest);
  }

  /** Where the last answer left off: the server sends only what changed since. */
  private _cursor: string | null = null;
  private _runs = new Map<string, IRun>();
  private _groups = new Map<string, IGroup>();

  private async _fetch(): Promise<void> {
    try {
      // A first look (or one the server cannot answer from the cursor) gets what is going
      // and a page of what ended; older ones come on request.
      const query: { [key: string]: string } = { ended: `${ENDED_PAGE}` };
      if (this._cursor) {
        query.since = this._cursor;
      }
      const url =
        URLExt.join(this._settings.baseUrl, 'nbmonitor', 'api', 'runs') +
        URLExt.objectToQueryString(query);
      const response = await ServerConnection.makeRequest(
        url,
        {},
        this._settings
      );
      if (!response.ok) {
        throw new Error(`HTTP ${response.status}`);
      }
      const body = (await response.json()) as {
        runs: IRun[];
        groups?: IGroup[];
        removed_runs?: string[];
        removed_groups?: string[];
        full?: boolean;
        more?: boolean;
        cursor?: string | null;
        error?: string | null;
      };
      if (body.full !== false) {
        this._runs.clear();
        this._groups.clear();
        this.more = body.more ?? false;
      }
      for (const run of body.runs) {
        this._runs.set(run.id, run);
      }
      for (const group of body.groups ?? []) {
        this._groups.set(group.id, group);
      }
      for (const id of body.removed_runs ?? []) {
        this._runs.delete(id);
      }
      for (const id of body.removed_groups ?? []) {
        this._groups.delete(id);
      }
      this._cursor = body.cursor ?? null;
      this._sort();
      this.problem = body.error ?? null;
      this.offline = false;
    } catch (reason) {
      this.offline = true;
      throw reason; // the poll backs off
    } finally {
      this._changed.emit();
    }
  }
}

/** The left sidebar panel: one row per run. */
class RunsPanel extends Widget {
  private _list = el('ul', 'nbm-list');
  private _offline = el(
    'div',
    'nbm-offline',
    'offline: the server does not answer; retrying'
  );
  private _problem = el('div', 'nbm-problem');
  private _showAll = false;
  /** The usage plots open now, by run or group id: kept (not redrawn) as rows are redrawn. */
  private _usage = new Map<string, UsageView>();
  /** The log tails open now (with the plots), by the same ids. */
  private _logs = new Map<string, LogsView>();
  /** The state of each run and group shown, by id: whether its plot needs refreshing. */
  private _states = new Map<string, string>();
  private _settings = ServerConnection.makeSettings();

  constructor(
    private _model: RunsModel,
    private _open: (path: string) => void,
    private _seen: Seen
  ) {
    super();
    this.id = 'nbmonitor-runs';
    this.title.caption = 'nbmonitor runs';
    this.title.label = 'Runs';
    this.addClass('nbm-panel');
    const header = el('div', 'nbm-header');
    header.appendChild(el('span', 'nbm-title', 'nbmonitor runs'));
    const filter = el(
      'button',
      'nbm-filter jp-mod-styled',
      'show all'
    ) as HTMLButtonElement;
    filter.onclick = () => {
      this._showAll = !this._showAll;
      filter.textContent = this._showAll ? 'show active' : 'show all';
      this.render();
    };
    header.appendChild(filter);
    if (
      'Notification' in window &&
      window.Notification.permission === 'default'
    ) {
      const ask = el(
        'button',
        'nbm-ask jp-mod-styled',
        'browser notifications'
      ) as HTMLButtonElement;
      ask.onclick = () =>
        void window.Notification.requestPermission().then(() => ask.remove());
      header.appendChild(ask);
    }
    this.node.appendChild(header);
    this.node.appendChild(this._offline);
    this.node.appendChild(this._problem);
    this.node.appendChild(this._list);
    this._model.changed.connect(() => this.render());
  }

  protected onAfterShow(): void {
    this._acknowledge();
  }

  /** What the panel lists while it is open has been seen: the status bar need not be red for it. */
  private _acknowledge(): void {
    if (!this.isVisible) {
      return;
    }
    this._seen.add(
      [
        ...this._model.runs.filter(current),
        ...this._model.groups.filter(currentGroup)
      ].filter(entry => PROBLEMS.has(entry.status))
    );
  }

  render(): void {
    this._acknowledge();
    this._offline.style.display = this._model.offline ? 'block' : 'none';
    const problem = this._model.offline ? null : this._model.problem;
    this._problem.style.display = problem ? 'block' : 'none';
    this._problem.textContent = problem ? `repo problem: ${problem}` : '';
    const runs = this._model.runs.filter(r => this._showAll || current(r));
    const groups = this._model.groups.filter(
      g => this._showAll || currentGroup(g)
    );
    // Drawn anew, then laid over the rows shown: a row that stays keeps its nodes, and with
    // them the keyboard focus, a selection of its text and its open usage plot.
    const fresh = el('ul', this._list.className);
    fresh.append(
      ...groups.map(group => this._groupRow(group)),
      ...runs.map(run => this._row(run))
    );
    if (runs.length + groups.length === 0) {
      fresh.appendChild(
        el('li', 'nbm-empty', this._showAll ? 'no runs yet' : 'no active runs')
      );
    }
    if (this._showAll && this._model.more) {
      const more = fresh.appendChild(el('li', 'nbm-more'));
      const button = more.appendChild(
        el('button', 'nbm-older jp-mod-styled', 'older runs')
      ) as HTMLButtonElement;
      button.onclick = () => {
        button.disabled = true;
        void this._model.older().finally(() => (button.disabled = false));
      };
    }
    morph(this._list, fresh);
    this._states = new Map([...runs, ...groups].map(e => [e.id, e.status]));
    for (const [id, view] of this._usage) {
      if (!this._states.has(id)) {
        view.dispose(); // its row is gone (ended, and only active runs are shown)
        this._usage.delete(id);
        this._logs.get(id)?.dispose();
        this._logs.delete(id);
        continue;
      }
      // A row that came new (or moved) holds a place for its plot and tail: put them there.
      this._list
        .querySelector(`.nbm-usage-spot[data-key="${id}"]`)
        ?.replaceWith(view.node);
      const logs = this._logs.get(id);
      if (logs) {
        this._list
          .querySelector(`.nbm-logs-spot[data-key="logs-${id}"]`)
          ?.replaceWith(logs.node);
      }
    }
    this._refreshUsage();
  }

  protected onResize(msg: Widget.ResizeMessage): void {
    super.onResize(msg);
    this._refreshUsage();
  }

  private _refreshUsage(): void {
    for (const [id, view] of this._usage) {
      view.update(ACTIVE.has(this._states.get(id) ?? ''));
    }
    for (const [id, view] of this._logs) {
      view.update(ACTIVE.has(this._states.get(id) ?? ''));
    }
  }

  /** The row's name shows and hides the usage plot of ``id`` under it. */
  private _usageOf(row: HTMLElement, id: string): void {
    const button = row.querySelector<HTMLButtonElement>('.nbm-toggle')!;
    const open = this._usage.get(id);
    row.dataset.key = id;
    button.setAttribute('aria-expanded', String(open !== undefined));
    if (open) {
      button.setAttribute('aria-controls', open.node.id);
    }
    button.title = open ? 'hide the usage plot' : 'show the usage plot';
    button.querySelector('.nbm-chevron')!.textContent = open ? '▾' : '▸';
    if (open) {
      for (const kind of ['nbm-usage-spot', 'nbm-logs-spot']) {
        const spot = row.appendChild(el('div', kind));
        spot.dataset.key = kind === 'nbm-logs-spot' ? `logs-${id}` : id;
        spot.dataset.keep = '';
      }
    }
    button.onclick = event => {
      event.stopPropagation(); // not the row's click, which opens the notebook
      const view = this._usage.get(id);
      if (view) {
        view.dispose();
        this._usage.delete(id);
        this._logs.get(id)?.dispose();
        this._logs.delete(id);
      } else {
        this._usage.set(id, new UsageView(id, this._settings));
        this._logs.set(id, new LogsView(id, this._settings));
      }
      this.render();
    };
  }

  private _row(run: IRun): HTMLElement {
    const row = head('nbm-run', run, where(run));
    row.dataset.runId = run.id;
    if (run.elsewhere) {
      const facts = row.querySelector('.nbm-facts')!;
      facts.textContent = `${facts.textContent} · on ${run.host}`;
    }
    if (run.usage && ACTIVE.has(run.status)) {
      const gpu = run.usage.gpu_memory
        ? ` · GPU ${bytes(run.usage.gpu_memory)}`
        : '';
      const text = `CPU ${Math.round(run.usage.cpu_percent)}% · ${bytes(run.usage.rss)}${gpu}`;
      row.appendChild(el('div', 'nbm-usage nbm-detail', text));
    }
    if (run.attempt_text) {
      row.appendChild(el('div', 'nbm-attempt nbm-detail', run.attempt_text));
    }
    const open = this._usage.has(run.id);
    const stuck = run.stack?.stuck_in;
    if (stuck && (STUCK.has(run.status) || open)) {
      const was = STUCK.has(run.status) ? '' : 'was ';
      const line = row.appendChild(
        el('div', 'nbm-stuck', `${was}stuck in ${stuck}`)
      );
      line.style.borderLeftColor = run.colour;
    }
    if (run.error) {
      row.appendChild(el('div', 'nbm-error', run.error));
    }
    if (run.workers.length > 0 && (ACTIVE.has(run.status) || this._showAll)) {
      row.appendChild(this._workers(run.workers));
    }
    if (open) {
      // Always there while open (empty without a stack), so the plot after it keeps its place.
      row.appendChild(this._stack(run.stack));
    }
    if (run.origin.lab_path) {
      const path = run.origin.lab_path;
      row.classList.add('nbm-openable');
      row.title = `open ${path}`;
      row.onclick = () => this._open(path);
    }
    this._usageOf(row, run.id);
    return row;
  }

  /** A group's row: its state and step, whom to blame, then a line per member. */
  private _groupRow(group: IGroup): HTMLElement {
    const row = head('nbm-run nbm-group', group, group.label);
    row.dataset.groupId = group.id;
    if (group.blame) {
      row.appendChild(el('div', 'nbm-error nbm-blame', group.blame));
    }
    for (const problem of group.problems) {
      row.appendChild(el('div', 'nbm-detail nbm-warning', problem));
    }
    if (group.attempt_text) {
      row.appendChild(el('div', 'nbm-attempt nbm-detail', group.attempt_text));
    }
    const members = el('ul', 'nbm-members');
    for (const member of group.members) {
      const item = el('li', 'nbm-member');
      item.dataset.runId = member.id;
      item.dataset.status = member.status;
      item.classList.toggle('nbm-blamed', member.blamed);
      const mark = item.appendChild(el('span', 'nbm-dot', '●'));
      mark.style.color = member.colour;
      const where = `${member.group.role} · ${member.host} · pid ${member.pid}`;
      item.appendChild(el('span', 'nbm-member-name', where));
      const waiting =
        member.waiting && ACTIVE.has(member.status)
          ? ` · in ${member.waiting}`
          : '';
      const text = `step ${member.step} · ${member.status}${waiting}`;
      item.appendChild(el('span', 'nbm-member-state', text));
      if (member.blamed) {
        item.appendChild(el('span', 'nbm-blamed-mark', 'to blame'));
      }
      item.title = member.error ?? member.origin.text;
      members.appendChild(item);
    }
    row.appendChild(members);
    const path = group.members.find(m => m.origin.lab_path)?.origin.lab_path;
    if (path) {
      row.classList.add('nbm-openable');
      row.title = `open ${path}`;
      row.onclick = () => this._open(path);
    }
    this._usageOf(row, group.id);
    return row;
  }

  /**
   * The frames of a run's stack, innermost first: ``function — file:line``
   * and its source line under it; above them when it was taken, and by whom.
   */
  private _stack(stack: IStack | null): HTMLElement {
    const box = el('div', 'nbm-stack');
    box.title = ''; // the row's tooltip says a click opens the notebook; not here
    box.onclick = event => event.stopPropagation(); // its text is there to be read and copied
    if (stack === null || stack.frames.length === 0) {
      return box;
    }
    const parts = [
      stack.state ? `stack when it turned ${stack.state}` : 'stack'
    ];
    if (stack.at !== null) {
      const ago = Date.now() / 1000 - stack.at;
      const date = new Date(stack.at * 1000);
      const when =
        ago < DAY_S ? date.toLocaleTimeString() : date.toLocaleString();
      parts.push(`${when} (${duration(ago)} ago)`);
    }
    if (stack.from === 'py-spy') {
      parts.push('read by py-spy: its process could not say');
    }
    if (stack.stuck_in === null) {
      parts.push('it has made progress since');
    }
    box.appendChild(el('div', 'nbm-stack-note', parts.join(', ')));
    const list = box.appendChild(el('ol', 'nbm-frames'));
    list.setAttribute('aria-label', 'stack, innermost frame first');
    for (const frame of stack.frames) {
      const item = list.appendChild(el('li', 'nbm-frame'));
      const where = item.appendChild(
        el('div', 'nbm-frame-where', `${frame.function} — `)
      );
      // A narrow panel breaks a long path after a slash, not within a name.
      const pieces = frame.file.match(/[^/\\]*[/\\]?/g) ?? [];
      pieces.filter(Boolean).forEach((part, i) => {
        if (i > 0) {
          where.appendChild(document.createElement('wbr'));
        }
        where.appendChild(document.createTextNode(part));
      });
      where.appendChild(document.createTextNode(`:${frame.line}`));
      if (frame.code) {
        item.appendChild(el('div', 'nbm-frame-code', frame.code));
      }
    }
    return box;
  }

  /** A run's workers, a line each: name or rank, pid, step, and how it ended. */
  private _workers(workers: IWorker[]): HTMLElement {
    const list = el('ul', 'nbm-members nbm-workers');
    for (const worker of workers) {
      const item = el('li', 'nbm-member');
      item.dataset.status = worker.state;
      const mark = item.appendChild(el('span', 'nbm-dot', '●'));
      mark.style.color = worker.colour;
      const who = worker.rank !== null ? `rank ${worker.rank}` : worker.name;
      item.appendChild(
        el('span', 'nbm-member-name', `${who} · pid ${worker.pid}`)
      );
      const how = worker.exit ? `: ${worker.exit}` : '';
      const state =
        worker.state === 'running' ? '' : ` · ${worker.state}${how}`;
      item.appendChild(
        el('span', 'nbm-member-state', `step ${worker.step}${state}`)
      );
      list.appendChild(item);
    }
    return list;
  }
}

/** "3 running · 1 stalled" in the status bar; red when anything is wrong. */
class RunsStatus extends Widget {
  constructor(
    private _model: RunsModel,
    onClick: () => void,
    private _seen: Seen
  ) {
    super();
    // Lab's own text items' class: the same font and line as the items beside it.
    this.addClass('jp-StatusBar-TextItem');
    this.addClass('nbm-statusbar');
    this.node.onclick = onClick;
    this._model.changed.connect(() => this.render());
    this._seen.changed.connect(() => this.render());
    this.render();
  }

  render(): void {
    const counts = new Map<string, number>();
    const entries = [
      ...this._model.runs.filter(current),
      ...this._model.groups.filter(currentGroup)
    ];
    for (const entry of entries) {
      counts.set(entry.status, (counts.get(entry.status) ?? 0) + 1);
    }
    const parts: string[] = [];
    for (const status of [
      'running',
      'late',
      'stalled',
      'crashed',
      'lost',
      'failed'
    ]) {
      const n = counts.get(status) ?? 0;
      if (n > 0) {
        parts.push(`${n} ${status}`);
      }
    }
    const news = entries.some(
      entry =>
        PROBLEMS.has(entry.status) && !this._seen.has(entry.id, entry.status)
    );
    const problems = news || this._model.problem !== null;
    this.node.textContent = this._model.offline
      ? 'nbmonitor offline'
      : this._model.problem !== null
        ? 'nbmonitor: repo problem'
        : parts.join(' · ') || 'no active runs';
    this.node.classList.toggle('nbm-bad', problems);
    this.node.title = news
      ? 'nbmonitor: news of a stall, crash or failure; click to see it in the runs panel'
      : 'nbmonitor: click to open the runs panel';
  }
}

/** A run or a group whose state may be news. */
interface IIncident {
  id: string;
  name: string;
  status: string;
  current: boolean;
  /** Where it runs, short: a notebook's or script's file name, a job's label. */
  text: string;
  /** What went wrong, for the browser notification's body. */
  detail: string;
}

/** One toast (and one browser notification) per incident; a recovery updates the toast. */
class Alerts {
  private _seen = new Map<string, string>();
  private _toasts = new Map<string, string>();
  private _first = true;

  constructor(private _model: RunsModel) {
    this._model.changed.connect(() => this.check());
  }

  check(): void {
    if (this._model.offline) {
      return;
    }
    const incidents: IIncident[] = [
      ...this._model.runs.map(run => ({
        id: run.id,
        name: run.name,
        status: run.status,
        current: current(run),
        text: fileOf(run),
        detail: run.error ?? run.origin.text
      })),
      // A group's members raise nothing of their own: the group's state is the incident.
      ...this._model.groups.map(group => ({
        id: group.id,
        name: group.name,
        status: group.status,
        current: currentGroup(group),
        text: group.label,
        detail: group.blame ?? group.label
      }))
    ];
    for (const incident of incidents) {
      const before = this._seen.get(incident.id);
      this._seen.set(incident.id, incident.status);
      if (before === incident.status) {
        continue;
      }
      // On the first look only what is stuck right now is news; old failures are not.
      const news =
        PROBLEMS.has(incident.status) &&
        incident.current &&
        (!this._first || incident.status === 'stalled');
      if (news) {
        this._raise(incident);
      } else if (before === 'stalled' && this._toasts.has(incident.id)) {
        Notification.update({
          id: this._toasts.get(incident.id)!,
          message: `${incident.name} recovered (${incident.status})`,
          type: 'success',
          autoClose: 5000
        });
        this._toasts.delete(incident.id);
      }
    }
    this._first = false;
  }

  private _raise(incident: IIncident): void {
    const what = incident.status;
    const text = `${incident.name} ${what} · ${incident.text}`;
    const id =
      incident.status === 'stalled'
        ? Notification.warning(text, { autoClose: false })
        : Notification.error(text, { autoClose: false });
    this._toasts.set(incident.id, id);
    if (
      'Notification' in window &&
      window.Notification.permission === 'granted'
    ) {
      new window.Notification(`nbmonitor: ${incident.name} ${what}`, {
        body: incident.detail,
        tag: `${incident.id}-${what}`
      });
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbmonitor:plugin',
  description:
    'Every nbmonitor run in a panel and the status bar, with notifications.',
  autoStart: true,
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    const model = new RunsModel();
    const seen = new Seen();
    const open = (path: string) =>
      void app.commands.execute('docmanager:open', { path });
    const panel = new RunsPanel(model, open, seen);
    app.shell.add(panel, 'left', { rank: 900 });
    if (statusBar) {
      const item = new RunsStatus(
        model,
        () => app.shell.activateById(panel.id),
        seen
      );
      statusBar.registerStatusItem('nbmonitor:status', {
        item,
        align: 'left',
        rank: 900
      });
    }
    new Alerts(model);
    panel.disposed.connect(() => model.dispose());
  }
};

export default plugin;

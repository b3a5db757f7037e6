/**
 * A run's log tail under its row in the Runs panel, when the row is opened:
 * the last lines it (or a group's members) logged and printed, from the
 * server (nbmonitor/api/runs/<id>/logs), refreshed while it runs.
 *
 * Every text is set with textContent, and control characters (ANSI escapes,
 * NUL) are shown escaped as the command line shows them: a line of output is
 * data, never markup and never a way to steer the page.
 */
import { ServerConnection } from '@jupyterlab/services';

import { getRun } from './usage';

/** Lines asked for, and how often a running run's are asked for again. */
export const LINES = 50;
const REFRESH_MS = 3000;

/** One line as the server sends it. */
export interface ILogLine {
  t: number;
  level: string;
  stream: string;
  text: string;
  who?: string;
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;
const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/** ``\x1b[31m`` for the escape character and the like: nbmonitor's _format.one_line. */
export function oneLine(text: string): string {
  return text.replace(CONTROL, char => {
    const code = char.charCodeAt(0);
    return (
      NAMED[char] ??
      (code < 0x100
        ? `\\x${code.toString(16).padStart(2, '0')}`
        : `\\u${code.toString(16).padStart(4, '0')}`)
    );
  });
}

/** Whether ``value`` is a line as the server sends one (a line it is not is left out). */
function isLine(value: unknown): value is ILogLine {
  const line = value as Partial<ILogLine> | null;
  return (
    typeof line === 'object' &&
    line !== null &&
    typeof line.t === 'number' &&
    typeof line.level === 'string' &&
    typeof line.stream === 'string' &&
    typeof line.text === 'string' &&
    (line.who === undefined || typeof line.who === 'string')
  );
}

function span(className: string, text: string): HTMLElement {
  const node = document.createElement('span');
  node.className = className;
  node.textContent = text;
  return node;
}

/** The tail of one run or group, fetched when opened and refreshed while it runs. */
export class LogsView {
  readonly node = document.createElement('div');
  private _note = document.createElement('div');
  private _list = document.createElement('ol');
  private _fetchedAt = 0;
  private _loading = false;
  private _unfinished = true;
  private _disposed = false;

  constructor(
    readonly id: string,
    private _settings: ServerConnection.ISettings
  ) {
    this.node.className = 'nbm-logs-view';
    this.node.dataset.key = `logs-${id}`; // the panel keeps it as it redraws the row
    this.node.title = ''; // the row's tooltip says a click opens the notebook; not here
    this.node.onclick = event => event.stopPropagation(); // its text is there to be read
    const heading = this.node.appendChild(document.createElement('div'));
    heading.className = 'nbm-logs-heading';
    heading.textContent = 'last lines';
    this._note.className = 'nbm-logs-note';
    this._note.textContent = 'loading…';
    this._list.className = 'nbm-logs';
    this._list.setAttribute('aria-label', 'last lines logged and printed');
    this._list.tabIndex = 0; // scrollable with the keyboard
    this.node.append(this._note, this._list);
  }

  dispose(): void {
    this._disposed = true;
    this.node.remove();
  }

  /** Fetch when new, and again every few seconds while the run is active. */
  update(active: boolean): void {
    const since = Date.now() - this._fetchedAt;
    const due =
      this._fetchedAt === 0 || (this._unfinished && since >= REFRESH_MS);
    if (due && !this._loading && !this._disposed) {
      void this._fetch(active);
    }
  }

  private async _fetch(active: boolean): Promise<void> {
    this._loading = true;
    try {
      const { response, body } = await getRun(this._settings, this.id, 'logs', {
        lines: String(LINES)
      });
      if (this._disposed) {
        return;
      }
      if (!response.ok || !Array.isArray(body.lines)) {
        const why =
          typeof body.message === 'string'
            ? body.message
            : `HTTP ${response.status}`;
        this._note.textContent = `no log tail: ${why}`;
      } else {
        const lines = body.lines.filter(isLine);
        this._show(lines, typeof body.skipped === 'number' ? body.skipped : 0);
      }
    } catch (reason) {
      this._note.textContent = `the server does not answer (${reason})`;
    } finally {
      this._loading = false;
      this._fetchedAt = Date.now();
      this._unfinished = active;
    }
  }

  private _show(lines: ILogLine[], skipped: number): void {
    const atEnd =
      this._list.scrollTop + this._list.clientHeight >=
      this._list.scrollHeight - 4;
    const notes = [];
    if (lines.length === 0) {
      notes.push('nothing logged or printed yet');
    }
    if (skipped > 0) {
      notes.push(`${skipped} damaged line(s) left out`);
    }
    this._note.textContent = notes.join('; ');
    this._note.style.display = notes.length ? '' : 'none';
    this._list.replaceChildren(
      ...lines.map(line => {
        const item = document.createElement('li');
        item.className = 'nbm-log-line';
        item.dataset.stream = line.stream;
        if (line.level) {
          item.dataset.level = line.level.toLowerCase();
        }
        const time = new Date(line.t * 1000).toLocaleTimeString([], {
          hour12: false
        });
        item.append(
          span('nbm-log-time', time),
          span('nbm-log-tag', oneLine(line.level || line.stream))
        );
        if (line.who) {
          item.append(span('nbm-log-who', oneLine(line.who)));
        }
        item.append(span('nbm-log-text', oneLine(line.text)));
        return item;
      })
    );
    this._list.style.display = lines.length ? '' : 'none';
    if (atEnd || this._fetchedAt === 0) {
      this._list.scrollTop = this._list.scrollHeight; // the newest line in view
    }
  }
}

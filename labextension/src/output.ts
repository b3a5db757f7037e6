/**
 * The outputs of a watched cell: its display (run.ts), and its usage plot
 * when it ends.
 *
 * The usage plot in its output: the mime type that
 * nbmonitor.widget.UsagePlot publishes, the plot's columns and peak lines
 * beside the bundle's image/svg+xml picture of it (what GitHub, nbviewer and
 * other front ends show). The panel's UsageChart draws that picture with
 * these columns: the legend hides and shows processes, the pointer reads out
 * a column.
 */
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { runRendererFactory } from './run';
import { asUsage, UsageChart } from './usage';

/**
 * nbmonitor.widget.USAGE_MIME: {peaks, skipped, columns}, the server's usage
 * answer less its SVG, and the plot's columns as JSON text.
 */
export const USAGE_MIME = 'application/vnd.nbmonitor.usage+json';
/** The bundle's picture of the plot: sent once, drawn here with the columns. */
const PICTURE = 'image/svg+xml';

/** One cell output's plot, drawn again with each update of the output. */
export class UsageOutput extends Widget implements IRenderMime.IRenderer {
  private _chart = new UsageChart();

  constructor(private _mimeType: string) {
    super();
    this.addClass('nbm-usage-output');
    this.node.appendChild(this._chart.node);
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    // The model holds the whole bundle: its picture is the plot this draws.
    const body = model.data[this._mimeType];
    const usage =
      typeof body === 'object' && body !== null && !Array.isArray(body)
        ? asUsage({ ...body, svg: model.data[PICTURE] })
        : null;
    if (usage === null || !this._chart.show(usage)) {
      this._chart.problem('this output holds no usage plot nbmonitor can draw');
    }
  }
}

export const usageRendererFactory: IRenderMime.IRendererFactory = {
  // Safe, so an untrusted notebook (one opened, not run here) shows it too: the SVG only ever
  // goes through adoptSvg, which keeps the elements and attributes the plot draws (no scripts,
  // handlers, links, styles or url()), the columns are read only as arrays of numbers, and
  // every text is set as text. JupyterLab's own image/svg+xml renderer is not safe: without
  // this one an untrusted notebook shows the text.
  safe: true,
  mimeTypes: [USAGE_MIME],
  // Before the standard renderers (image/svg+xml is 80): JupyterLab draws this, not the picture.
  defaultRank: 40,
  createRenderer: options => new UsageOutput(options.mimeType)
};

const extensions: IRenderMime.IExtension[] = [
  {
    id: 'nbmonitor:run-output',
    description:
      "A watched cell's display: one line, its story on a click, the truth when its kernel died.",
    rendererFactory: runRendererFactory,
    rank: 40,
    dataType: 'json'
  },
  {
    id: 'nbmonitor:usage-output',
    description: "A watched cell's usage plot, with its legend and read-out.",
    rendererFactory: usageRendererFactory,
    rank: 40,
    dataType: 'json'
  }
];

export default extensions;

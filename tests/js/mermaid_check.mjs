// Parse Mermaid sources with Mermaid's own parser and diagram database (tests/helpers/mermaid.py runs this).
// stdin: a JSON array of sources. stdout: a JSON array, one result per source:
//   {ok: true, type, title, sections, tasks: [{id, task, section, start, end, milestone, done, crit, active}]}
//   {ok: false, error}
// For a gantt, the database computes every task's start and end: an invalid date, a dateFormat mismatch or a
// reference to an unknown task is an error here, as it is when a forge renders the diagram.
import { JSDOM } from 'jsdom';

const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.DOMParser = dom.window.DOMParser;
globalThis.Element = dom.window.Element;
const { default: mermaid } = await import('mermaid');
mermaid.initialize({ startOnLoad: false });

async function check(source) {
  try {
    const diagram = await mermaid.mermaidAPI.getDiagramFromText(source);
    const db = diagram.db;
    const out = { ok: true, type: diagram.type, title: db.getDiagramTitle ? db.getDiagramTitle() : '' };
    if (diagram.type === 'gantt') {
      const tasks = db.getTasks();
      out.sections = db.getSections();
      out.tasks = tasks.map((t) => ({
        id: t.id, task: t.task.trim(), section: t.section,
        start: t.startTime.toISOString(), end: t.endTime.toISOString(),
        milestone: Boolean(t.milestone), done: Boolean(t.done), crit: Boolean(t.crit), active: Boolean(t.active),
      }));
      for (const t of tasks) {
        if (Number.isNaN(t.startTime.getTime()) || Number.isNaN(t.endTime.getTime())) {
          throw new Error(`task ${t.id}: invalid start or end`);
        }
      }
    }
    return out;
  } catch (err) {
    return { ok: false, error: String(err && err.message ? err.message : err).slice(0, 500) };
  }
}

let input = '';
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const source of JSON.parse(input)) results.push(await check(source));
process.stdout.write(JSON.stringify(results));

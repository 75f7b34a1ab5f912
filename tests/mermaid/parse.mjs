// Parse Mermaid files with Mermaid's own parser; print one JSON line per file: {file, ok, type | error}.
// Mermaid needs a DOM (DOMPurify) even to parse, so a jsdom window stands in for the browser.
import { readFileSync } from 'node:fs';
import { JSDOM } from 'jsdom';

const dom = new JSDOM('');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const mermaid = (await import('mermaid')).default;

for (const file of process.argv.slice(2)) {
  try {
    const parsed = await mermaid.parse(readFileSync(file, 'utf8'));
    console.log(JSON.stringify({ file, ok: true, type: parsed.diagramType }));
  } catch (error) {
    console.log(JSON.stringify({ file, ok: false, error: String(error.message || error) }));
  }
}

#!/usr/bin/env node
// The Sentinel content of the project, read from its source files under sentinel/ (Azure-Sentinel's formats):
//   analytics/*.yaml   scheduled analytics rules      hunting/*.yaml   hunting queries
//   parsers/*.yaml     KQL functions (parsers)        workbooks/*.json workbooks
//   dataconnectors/*.json  the data connector definition's connectorUiConfig
// Used by check.mjs (every KQL text in them is checked) and by the Python tests (the rule limits), so both read
// the YAML with the same parser. The YAML is read as YAML 1.1 with its core types, as close as a JavaScript
// parser gets to what Bicep's loadYamlContent (SharpYaml) makes of it.
//
// Usage: node tools/kql/sentinel-content.mjs [--root DIR]   prints the content as JSON
// Exit status: 0 ok, 2 a file does not parse or is not an object.

import { createRequire } from 'node:module';
import { readFileSync, readdirSync, existsSync, statSync } from 'node:fs';
import { join, relative, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const KINDS = { analytics: '.yaml', hunting: '.yaml', parsers: '.yaml', workbooks: '.json', dataconnectors: '.json' };

function listFiles(dir, ext) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const e of readdirSync(dir).sort()) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) out.push(...listFiles(p, ext));
    else out.push(p);
  }
  return out;
}

export function loadContent(root) {
  const require = createRequire(join(root, 'package.json'));
  const YAML = require('yaml');
  const content = {};
  const errors = [];
  for (const [kind, ext] of Object.entries(KINDS)) {
    content[kind] = [];
    for (const file of listFiles(join(root, 'sentinel', kind), ext)) {
      const rel = relative(root, file);
      if (!file.endsWith(ext)) { errors.push(`${rel}: only ${ext} files belong in sentinel/${kind}/`); continue; }
      const text = readFileSync(file, 'utf8');
      try {
        const doc = ext === '.yaml' ? YAML.parse(text, { version: '1.1', prettyErrors: true, uniqueKeys: true }) : JSON.parse(text);
        if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new Error('not a mapping');
        content[kind].push({ file: rel, doc });
      } catch (e) {
        errors.push(`${rel}: ${e.message.split('\n')[0]}`);
      }
    }
  }
  return { content, errors };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  let root = resolve(here, '..', '..');
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--root' && i + 1 < args.length) root = resolve(args[++i]);
    else { process.stderr.write(`sentinel-content.mjs: unknown argument ${args[i]}\n`); process.exit(2); }
  }
  const { content, errors } = loadContent(root);
  if (errors.length) { process.stderr.write(errors.join('\n') + '\n'); process.exit(2); }
  process.stdout.write(JSON.stringify(content, null, 2) + '\n');
}

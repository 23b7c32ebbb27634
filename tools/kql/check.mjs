#!/usr/bin/env node
// KQL checker: parses and binds every KQL text of the project with the Kusto language service
// (@kusto/language-service-next) against the declared schemas, and reports every error.
//
// Schemas:  the custom tables from irm_connector/columns.json (IRMAlerts_CL, O365Audit_CL,
//           IRMConnectorHealth_CL), every schemas/*.json (AuditLogs, SigninLogs), and the KQL
//           functions of sentinel/parsers/*.yaml (FunctionAlias, FunctionQuery), so queries calling
//           IRMAlerts / IRMAlerts() bind.
// Checked:  the FunctionQuery of every parser, the query of every analytics rule and hunting query
//           (sentinel/analytics, sentinel/hunting: Azure-Sentinel YAML, read by sentinel-content.mjs), every
//           query of sentinel/workbooks/*.json (workbook parameters such as {TimeRange} substituted), every
//           query of the data connector definition (sentinel/dataconnectors/*.json: lastDataReceivedQuery,
//           graph baseQuery, connectivity criteria), and every `transformKql: '...'` in infra/**/*.bicep (bound
//           against `source` = each DCR stream).
//           A rule's or hunting query's entity mappings, custom details and {{placeholders}} must name columns
//           of its result (its ResultType), and a hunting query's Type_n_Identifier entity columns too.
//
// Usage: node tools/kql/check.mjs [--root DIR] [--columns FILE] [--file F.kql]... [--query NAME=KQL]...
//          [--only-extra] [--json]
//   --columns   use this columns.json instead of <root>/irm_connector/columns.json
//   --file      check this KQL file too;  --query  check this inline text too (NAME=KQL)
//   --only-extra  check only the --file/--query texts (the schemas and functions are still loaded)
//   --json      print a JSON report instead of text
// Exit status: 0 no errors, 1 errors found, 2 usage or setup problem.

import { createRequire } from 'node:module';
import { readFileSync, readdirSync, existsSync, statSync } from 'node:fs';
import { join, basename, dirname, resolve, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadContent } from './sentinel-content.mjs';

const here = dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  process.stderr.write(`check.mjs: ${msg}\n`);
  process.exit(2);
}

// ---- arguments ----
const args = process.argv.slice(2);
let root = resolve(here, '..', '..');
let columnsPath = null;
let jsonOut = false;
let onlyExtra = false;
const extra = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const next = () => (i + 1 < args.length ? args[++i] : usage(`${a} needs a value`));
  if (a === '--root') root = resolve(next());
  else if (a === '--columns') columnsPath = resolve(next());
  else if (a === '--file') { const f = resolve(next()); extra.push({ name: f, text: readFileSync(f, 'utf8'), kind: 'file' }); }
  else if (a === '--query') {
    const v = next(); const eq = v.indexOf('=');
    if (eq < 1) usage('--query wants NAME=KQL');
    extra.push({ name: v.slice(0, eq), text: v.slice(eq + 1), kind: 'inline' });
  }
  else if (a === '--json') jsonOut = true;
  else if (a === '--only-extra') onlyExtra = true;
  else if (a === '-h' || a === '--help') {
    process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter(l => l.startsWith('//')).map(l => l.slice(3)).join('\n') + '\n');
    process.exit(0);
  }
  else usage(`unknown argument ${a}`);
}
columnsPath ??= join(root, 'irm_connector', 'columns.json');

// ---- the Kusto language service (a Bridge.NET build: it installs globals) ----
const require = createRequire(join(root, 'package.json'));
let K;
try {
  require('@kusto/language-service-next/bridge.min.js');
  require('@kusto/language-service-next/Kusto.Language.Bridge.min.js');
  K = globalThis.Kusto.Language;
} catch (e) {
  usage(`cannot load @kusto/language-service-next (run \`npm ci\` in ${root}): ${e.message}`);
}
const S = K.Symbols;

// ---- schemas ----
const KUSTO_TYPES = new Set(['string', 'int', 'long', 'real', 'bool', 'boolean', 'dynamic', 'datetime', 'timespan', 'guid', 'decimal']);
function schemaText(columns, where) {
  return '(' + columns.map(c => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(c.name)) usage(`${where}: bad column name ${JSON.stringify(c.name)}`);
    if (!KUSTO_TYPES.has(c.type)) usage(`${where}: column ${c.name} has unknown type ${c.type}`);
    return `['${c.name}']:${c.type === 'boolean' ? 'bool' : c.type}`;
  }).join(', ') + ')';
}

if (!existsSync(columnsPath)) usage(`no ${columnsPath}`);
const columnsFile = JSON.parse(readFileSync(columnsPath, 'utf8'));
const streams = Object.values(columnsFile.streams ?? {});
if (streams.length === 0) usage(`${columnsPath} declares no streams`);

const tables = [];
for (const s of streams) tables.push(new S.TableSymbol.$ctor7(s.table, schemaText(s.columns, `${columnsPath} ${s.table}`), s.description ?? null));
const schemaDir = join(root, 'schemas');
if (existsSync(schemaDir)) {
  for (const f of readdirSync(schemaDir).filter(f => f.endsWith('.json')).sort()) {
    const sch = JSON.parse(readFileSync(join(schemaDir, f), 'utf8'));
    tables.push(new S.TableSymbol.$ctor7(sch.table, schemaText(sch.columns, `schemas/${f}`), null));
  }
}

function listFiles(dir, ext) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const e of readdirSync(dir).sort()) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) out.push(...listFiles(p, ext));
    else if (e.endsWith(ext)) out.push(p);
  }
  return out;
}

const { content, errors: contentErrors } = loadContent(root);
if (contentErrors.length) usage(`Sentinel content does not load:\n${contentErrors.join('\n')}`);
const functions = content.parsers.map(p => new S.FunctionSymbol.$ctor16(p.doc.FunctionAlias, '()', `{\n${p.doc.FunctionQuery}\n}`, null));

const globals = K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor('workspace', [...tables, ...functions]));

// ---- what to check ----
// The columns a rule or hunting query's settings name, which its result must have: [what names it, column].
function resultNeeds(doc, kind) {
  const needs = [];
  const perType = {};
  for (const e of doc.entityMappings ?? []) {
    const n = perType[e.entityType] = (perType[e.entityType] ?? -1) + 1;
    for (const f of e.fieldMappings ?? []) {
      needs.push([`entity ${e.entityType}.${f.identifier}`, f.columnName]);
      // Sentinel reads a hunting result's entities from these columns only (a saved search keeps no mappings).
      if (kind === 'hunting') needs.push([`hunting entity column`, `${e.entityType}_${n}_${f.identifier}`]);
    }
  }
  for (const [name, column] of Object.entries(doc.customDetails ?? {})) needs.push([`custom detail ${name}`, column]);
  for (const field of ['alertDisplayNameFormat', 'alertDescriptionFormat']) {
    for (const m of (doc.alertDetailsOverride?.[field] ?? '').matchAll(/\{\{([^{}]*)\}\}/g)) needs.push([field, m[1].trim()]);
  }
  return needs;
}

const items = [];
const rel = p => relative(root, p);
if (!onlyExtra) {
  for (const p of content.parsers) items.push({ name: `${p.file}#FunctionQuery`, text: p.doc.FunctionQuery });
  for (const kind of ['analytics', 'hunting']) {
    for (const r of content[kind]) items.push({ name: `${r.file}#query`, text: r.doc.query, needs: resultNeeds(r.doc, kind) });
  }
  for (const { file, doc: wb } of content.workbooks) {
    const walk = (list, path) => {
      for (const it of list ?? []) {
        if (it.type === 3 && it.content?.query) {
          // Workbook parameters: {TimeRange} expands to a time predicate, {TimeRange:start}/{...:end} to datetimes.
          const q = it.content.query
            .replace(/\{TimeRange:start\}/g, 'ago(30d)')
            .replace(/\{TimeRange:end\}/g, 'now()')
            .replace(/\{TimeRange\}/g, '> ago(30d)');
          if (/\{[A-Za-z_][A-Za-z0-9_:]*\}/.test(q)) items.push({ name: `${file}#${path}${it.name}`, text: q, forceError: 'unsubstituted workbook parameter' });
          else items.push({ name: `${file}#${path}${it.name}`, text: q });
        }
        if (it.type === 12) walk(it.content?.items, `${path}${it.name}/`);
      }
    };
    walk(wb.items, '');
  }
  for (const { file, doc: dc } of content.dataconnectors) {
    (dc.dataTypes ?? []).forEach((d, i) => items.push({ name: `${file}#dataTypes[${i}]`, text: d.lastDataReceivedQuery }));
    (dc.graphQueries ?? []).forEach((g, i) => items.push({ name: `${file}#graphQueries[${i}]`, text: g.baseQuery }));
    (dc.connectivityCriteria ?? []).forEach((c, i) => (c.value ?? []).forEach((v, j) =>
      items.push({ name: `${file}#connectivityCriteria[${i}][${j}]`, text: v })));
  }
  // DCR transformations: each is bound against a `source` table with a DCR stream's columns.
  for (const f of listFiles(join(root, 'infra'), '.bicep')) {
    const text = readFileSync(f, 'utf8');
    const re = /transformKql:\s*'((?:[^'\\]|\\.)*)'/g;
    let m;
    while ((m = re.exec(text)) !== null) {
      const kql = m[1].replace(/\\'/g, "'").replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
      for (const s of streams) {
        const src = new S.TableSymbol.$ctor7('source', schemaText(s.columns, s.stream), null);
        const g = K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor('dcr', [src]));
        items.push({ name: `${rel(f)}:transformKql@${m.index} (${s.stream})`, text: kql, globals: g });
      }
    }
  }
}
items.push(...extra.map(e => ({ name: e.name, text: e.text })));
if (items.length === 0) usage('nothing to check');

// ---- check ----
function lineCol(text, pos) {
  const before = text.slice(0, pos).split('\n');
  return `${before.length}:${before[before.length - 1].length + 1}`;
}
const report = [];
let errorCount = 0;
for (const it of items) {
  const code = K.KustoCode.ParseAndAnalyze(it.text, it.globals ?? globals);
  const ds = code.GetDiagnostics();
  const errors = [];
  const warnings = [];
  for (let i = 0; i < ds.Count; i++) {
    const d = ds.getItem(i);
    const entry = { code: d.Code, message: d.Message, at: lineCol(it.text, d.Start), snippet: it.text.substr(d.Start, Math.max(d.Length, 1)) };
    (String(d.Severity) === 'Error' ? errors : warnings).push(entry);
  }
  if (it.forceError) errors.push({ code: 'CHECK', message: it.forceError, at: '1:1', snippet: '' });
  if (it.needs?.length) {
    const result = new Set();
    const columns = code.ResultType?.Columns;
    for (let i = 0; i < (columns?.Count ?? 0); i++) result.add(columns.getItem(i).Name);
    for (const [what, column] of it.needs) {
      if (!result.has(column)) errors.push({ code: 'RESULT', message: `${what} names ${column}, not a column of the query's result`, at: '1:1', snippet: '' });
    }
  }
  errorCount += errors.length;
  report.push({ name: it.name, errors, warnings });
}

if (jsonOut) {
  process.stdout.write(JSON.stringify({ checked: report.length, errorCount, functions: content.parsers.map(p => p.doc.FunctionAlias), tables: tables.map(t => t.Name), report }, null, 2) + '\n');
} else {
  for (const r of report) {
    process.stdout.write(`${r.errors.length ? 'FAIL' : 'ok  '} ${r.name}\n`);
    for (const e of r.errors) process.stdout.write(`     error ${e.code} at ${e.at}: ${e.message} [${e.snippet}]\n`);
  }
  process.stdout.write(`${report.length} KQL texts checked, ${errorCount} errors\n`);
}
process.exit(errorCount ? 1 : 0);

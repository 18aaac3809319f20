#!/usr/bin/env node
// Writes man/ovl.1 from the command line's own help, from dist/cli.js (`npm run man` builds it first).
// test/docs.test.ts checks the committed page is what this writes.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { buildProgram } = await import(join(root, "dist", "cli.js"));
const { manPage } = await import(join(root, "dist", "cli", "docs.js"));
const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
mkdirSync(join(root, "man"), { recursive: true });
writeFileSync(join(root, "man", "ovl.1"), manPage(await buildProgram(), version));

/**
 * The command line's own documentation (issue 12 item 8): an example in every command's help, completion
 * scripts that real shells load and that complete, and a man page that is what the help says.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { ovl, requireBuiltCli } from "./cli-helpers.js";

beforeAll(() => requireBuiltCli());

const COMMANDS = ["ls", "mount", "umount", "fuser", "diff", "which", "stack", "run", "demo", "completion"];

/** A shell, which CI installs (.ci/run); locally its absence is said, and the test skipped, never in CI. */
function shell(name: string): boolean {
  const found = spawnSync("sh", ["-c", `command -v ${name}`]).status === 0;
  if (!found && process.env.CI) throw new Error(`${name} is missing: .ci/run installs it`);
  if (!found) console.log(`skipping the ${name} completion check: ${name} is not installed (apt-get install ${name})`);
  return found;
}

describe("help, completion and the man page", () => {
  it("every command's --help ends with examples", async () => {
    for (const cmd of ["", ...COMMANDS]) {
      const r = await ovl(cmd ? [cmd, "--help"] : ["--help"]);
      expect([cmd, r.exitCode]).toEqual([cmd, 0]);
      expect(r.stdout).toMatch(/\nExamples:\n {2}ovl /);
    }
  });

  it("bash completes commands and each command's options, from the script ovl prints", async () => {
    const script = (await ovl(["completion", "bash"])).stdout;
    const complete = (...words: string[]) =>
      execFileSync("bash", ["-c", `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _ovl; printf '%s\\n' "\${COMPREPLY[@]}"`], {
        encoding: "utf8",
      })
        .split("\n")
        .filter(Boolean);
    expect(complete("ovl", "m")).toEqual(["mount"]);
    expect(complete("ovl", "ls", "--tr")).toEqual(["--tree"]);
    expect(complete("ovl", "umount", "-")).toEqual(expect.arrayContaining(["-l", "--lazy", "-R", "--recursive", "--help"]));
    expect((await ovl(["completion", "tcsh"])).exitCode).toBe(1);
  });

  it("zsh and fish load their scripts", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ovl-compl-"));
    try {
      if (shell("zsh")) {
        writeFileSync(join(dir, "_ovl"), (await ovl(["completion", "zsh"])).stdout);
        const r = spawnSync("zsh", ["-f", "-c", `autoload -U compinit && compinit -u -D && source ${join(dir, "_ovl")} && print -r -- $_comps[ovl]`], { encoding: "utf8" });
        expect([r.status, r.stdout.trim()]).toEqual([0, "_ovl"]);
      }
      if (shell("fish")) {
        writeFileSync(join(dir, "ovl.fish"), (await ovl(["completion", "fish"])).stdout);
        const r = spawnSync("fish", ["--no-config", "-c", `source ${join(dir, "ovl.fish")}; complete -C 'ovl ls --tr'`], { encoding: "utf8" });
        expect(r.status).toBe(0);
        expect(r.stdout).toMatch(/^--tree\t/m);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("man/ovl.1 is what the help says (npm run man), and man renders it", () => {
    const root = fileURLToPath(new URL("..", import.meta.url));
    const committed = readFileSync(join(root, "man", "ovl.1"), "utf8");
    const dir = mkdtempSync(join(tmpdir(), "ovl-man-"));
    try {
      const generate = `
        const { buildProgram } = await import(${JSON.stringify(join(root, "dist", "cli.js"))});
        const { manPage } = await import(${JSON.stringify(join(root, "dist", "cli", "docs.js"))});
        process.stdout.write(manPage(await buildProgram(), ${JSON.stringify(JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version)}));`;
      const fresh = execFileSync(process.execPath, ["--input-type=module", "-e", generate], { encoding: "utf8" });
      expect(fresh).toBe(committed);
      const rendered = spawnSync("man", ["-l", join(root, "man", "ovl.1")], { encoding: "utf8", env: { ...process.env, MANPAGER: "cat", MANWIDTH: "100" } });
      expect(rendered.status).toBe(0);
      for (const cmd of COMMANDS) expect(rendered.stdout).toContain(`   ${cmd}`);
      expect(rendered.stdout).toContain("EXIT STATUS");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

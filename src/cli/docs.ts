/**
 * What the command line says about itself, all from one source (the commander program): an example for
 * every command's `--help`, shell completion scripts (`ovl completion bash|zsh|fish`), and the ovl(1) man
 * page (scripts/gen-man.mjs writes man/ovl.1 with `manPage()`; a test keeps it in step with the help).
 */
import type { Command, Option } from "commander";

/** Examples for each command's help (and the man page), as a user would type them. */
export const EXAMPLES: Record<string, string[]> = {
  ovl: ["ovl demo", "ovl ls -T", "ovl mount --lower ./app --lower ./base --upper ./u --work ./w ./merged", "ovl umount ./merged"],
  ls: ["ovl ls", "ovl ls -A -o TARGET,FSTYPE,SOURCE", "ovl ls -T", "ovl ls -r -n -o TARGET,UPPER", "ovl ls -F saved-mountinfo.txt", "ovl ls --json /merged"],
  mount: [
    "ovl mount --lower ./app --lower ./base --upper ./u --work ./w ./merged",
    "ovl mount --lower ./a --lower ./b -r ./readonly",
    "ovl mount -t overlay overlay -o lowerdir=/a:/b,upperdir=/u,workdir=/w /merged",
    "ovl mount --lower ./rootfs --upper ./u --work ./w --idmap 0:100000:65536 ./merged",
    "ovl mount -o 'lowerdir=/a:/b,X-mount.idmap=u:0:100000:65536 g:0:100000:65536' /merged",
    "ovl mount --lower ./a --lower ./b --idmap /proc/4242/ns/user ./merged",
  ],
  umount: ["ovl umount ./merged", "ovl umount -l ./merged", "ovl umount -R -v ./merged"],
  fuser: ["ovl fuser ./merged", "ovl fuser --json ./merged"],
  diff: ["ovl diff ./merged", "ovl diff --upper ./u --lower ./base", "ovl diff --json ./merged"],
  which: ["ovl which ./merged/etc/hosts", "ovl which --json ./merged/usr/bin"],
  run: ["ovl run --lower ./app --lower ./base --tmp -- make test", "ovl run --lower ./rootfs --upper ./changes --work ./work -- sh", "ovl run --image alpine -- /bin/sh -c 'cat /etc/os-release'", "ovl run --lower ./rootfs --tmp --idmap 0:100000:65536 -- stat -c %u /etc/passwd"],
  image: [
    "skopeo copy docker://alpine:3 oci-archive:alpine.tar && ovl image import alpine.tar alpine",
    "docker save myapp:1 -o myapp.tar && ovl image import myapp.tar",
    "ovl image ls",
    "ovl image mount alpine ./merged --upper ./u --work ./w",
    "ovl image rm alpine",
  ],
  commit: ["ovl image mount alpine ./merged --upper ./u --work ./w && touch ./merged/new && ovl commit ./merged alpine-plus"],
  layer: ["ovl layer export ./upper --lower ./base -o changes.tar", "ovl layer export ./merged -z -o layer.tar.gz"],
  snapshotter: [
    "ovl snapshotter --address /run/ovl/snapshotter.sock --root /var/lib/ovl",
    "ctr images pull --snapshotter ovl docker.io/library/alpine:3 && ctr run --rm --snapshotter ovl docker.io/library/alpine:3 t1 true",
  ],
  snapshot: ["ovl snapshot ls --store /var/lib/ovl", "ovl snapshot ls -f kind==committed -J", "ovl snapshot usage default/3/sha256:8a3b...", "ovl snapshot rm default/9/t1"],
  demo: ["ovl demo", "ovl demo --pause"],
  stack: ["ovl stack ./merged/etc", "ovl stack --lower ./base --upper ./u /etc"],
  completion: ["ovl completion bash > /etc/bash_completion.d/ovl", "ovl completion zsh > \"${fpath[1]}/_ovl\"", "ovl completion fish > ~/.config/fish/completions/ovl.fish"],
};

/** Adds the examples to the help of the program and of every command that has some. */
export function addExamples(program: Command): void {
  const add = (cmd: Command, name: string) => {
    const list = EXAMPLES[name];
    if (list) cmd.addHelpText("after", `\nExamples:\n${list.map((e) => `  ${e}`).join("\n")}\n`);
  };
  add(program, "ovl");
  for (const cmd of program.commands) add(cmd, cmd.name());
}

interface OptionInfo {
  short?: string;
  long?: string;
  takesValue: boolean;
  description: string;
}

const optionInfo = (o: Option): OptionInfo => ({
  ...(o.short ? { short: o.short } : {}),
  ...(o.long ? { long: o.long } : {}),
  takesValue: o.required || o.optional,
  description: o.description,
});

const visibleOptions = (cmd: Command): OptionInfo[] =>
  cmd.options.filter((o) => !(o as Option & { hidden?: boolean }).hidden).map(optionInfo);

const commandsOf = (program: Command) => program.commands.filter((c) => !(c as Command & { _hidden?: boolean })._hidden);

/** A completion script for bash, zsh or fish: subcommands, and each one's options; paths otherwise. */
export function completionScript(program: Command, shell: "bash" | "zsh" | "fish"): string {
  const cmds = commandsOf(program);
  const words = (c: Command) => visibleOptions(c).flatMap((o) => [o.short, o.long].filter((x): x is string => !!x));
  if (shell === "bash") {
    const cases = cmds
      .map((c) => `    ${[c.name(), ...c.aliases()].join("|")}) opts=${JSON.stringify([...words(c), "--help"].join(" "))} ;;`)
      .join("\n");
    return `# bash completion for ovl (ovl completion bash)
_ovl() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" sub="" i opts
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "\${COMP_WORDS[i]}" in -*) ;; *) sub="\${COMP_WORDS[i]}"; break ;; esac
  done
  if [ -z "$sub" ]; then
    COMPREPLY=($(compgen -W ${JSON.stringify([...cmds.map((c) => c.name()), ...words(program), "--help"].join(" "))} -- "$cur"))
    return
  fi
  case "$sub" in
${cases}
    *) opts="" ;;
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  else
    COMPREPLY=($(compgen -f -- "$cur"))
  fi
}
complete -o filenames -F _ovl ovl
`;
  }
  const esc = (s: string) => s.replace(/'/g, "'\\''");
  if (shell === "zsh") {
    const subs = cmds.map((c) => `    '${c.name()}:${esc(c.description())}'`).join("\n");
    const cases = cmds
      .map((c) => {
        const specs = visibleOptions(c).map((o) => {
          const names = [o.short, o.long].filter(Boolean) as string[];
          const head = names.length > 1 ? `'(${names.join(" ")})'{${names.join(",")}}` : `'${names[0]}`;
          const tail = `[${esc(o.description).replace(/[[\]]/g, "")}]${o.takesValue ? ":value:_files" : ""}'`;
          return names.length > 1 ? `${head}'${tail}` : `${head}${tail}`;
        });
        return `      ${c.name()}) _arguments ${[...specs, "'*:path:_files'"].join(" ")} ;;`;
      })
      .join("\n");
    return `#compdef ovl
# zsh completion for ovl (ovl completion zsh)
_ovl() {
  local -a subcommands
  subcommands=(
${subs}
  )
  if (( CURRENT == 2 )); then
    _describe 'ovl command' subcommands
    return
  fi
  case "$words[2]" in
${cases}
      *) _files ;;
  esac
}
compdef _ovl ovl
`;
  }
  const lines = ["# fish completion for ovl (ovl completion fish)", "complete -c ovl -f"];
  for (const c of cmds) lines.push(`complete -c ovl -n '__fish_use_subcommand' -a '${c.name()}' -d '${esc(c.description())}'`);
  for (const c of cmds) {
    for (const o of visibleOptions(c)) {
      const parts = [`complete -c ovl -n '__fish_seen_subcommand_from ${c.name()}'`];
      if (o.short) parts.push(`-s ${o.short.replace(/^-/, "")}`);
      if (o.long) parts.push(`-l ${o.long.replace(/^--/, "")}`);
      if (o.takesValue) parts.push("-r -F");
      parts.push(`-d '${esc(o.description)}'`);
      lines.push(parts.join(" "));
    }
    lines.push(`complete -c ovl -n '__fish_seen_subcommand_from ${c.name()}' -F`);
  }
  return `${lines.join("\n")}\n`;
}

/** roff's text escapes: backslash, and a line that would start with `.` or `'`. */
const roff = (s: string) => s.replace(/\\/g, "\\e").replace(/-/g, "\\-").replace(/^([.'])/gm, "\\&$1");

/** The ovl(1) man page, from the program's own descriptions, options and examples. */
export function manPage(program: Command, version: string): string {
  const out: string[] = [
    `.TH OVL 1 "" "ovl ${version}" "User Commands"`,
    ".SH NAME",
    `ovl \\- ${roff(program.description())}`,
    ".SH SYNOPSIS",
    ...commandsOf(program).map((c) => `.B ovl ${c.name()}\n${roff(c.usage())}\n.br`),
    ".SH DESCRIPTION",
    "ovl mounts, unmounts, lists and inspects Linux overlay filesystems. Every path is looked up once, into a file descriptor, and every rule the kernel would apply is checked on that descriptor before anything is mounted; errors name the path and the rule it broke. Paths are bytes: arguments are taken as the shell gave them.",
    ".SH COMMANDS",
  ];
  for (const c of commandsOf(program)) {
    out.push(`.SS ${c.name()}${c.aliases().length ? ` (${c.aliases().join(", ")})` : ""}`, roff(c.description()));
    for (const o of visibleOptions(c)) {
      out.push(".TP", `.B ${roff([o.short, o.long].filter(Boolean).join(", "))}${o.takesValue ? " \\fIvalue\\fR" : ""}`, roff(o.description));
    }
    const ex = EXAMPLES[c.name()];
    if (ex) out.push(".PP", "Examples:", ".RS", ".nf", ...ex.map(roff), ".fi", ".RE");
  }
  out.push(
    ".SH EXIT STATUS",
    "0 success; 1 usage, permission, or a lookup that found nothing or failed (ls, which, diff, fuser); 32 a failed mount or unmount; 64 some of several targets failed. ovl run passes its command's status through (127 not found, 126 not executable, 128+N killed by signal N).",
    ".SH SEE ALSO",
    ".BR mount (8),",
    ".BR umount (8),",
    ".BR findmnt (8),",
    ".BR fuser (1)",
  );
  return `${out.join("\n")}\n`;
}

/**
 * What the command modules (src/cli/commands/, one a command) are handed and share: the factory that makes
 * a subcommand with ovl's error format and help hint, and commander helpers.
 */
import type { Command } from "commander";

/** Makes the subcommand `name` on the program: commander's errors as `ovl: <name>: <what>`, and a pointer to its help. */
export type CommandFactory = (name: string) => Command;

/** A repeatable option's values, in the order given (`--lower A --lower B`). */
export const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/** Every line of a message with ovl's prefix: the first with `first`, the rest (commander's "Did you mean") with `rest`. */
export function prefixLines(str: string, first: string, rest = first): string {
  const lines = str.replace(/\n$/, "").split("\n");
  return `${lines.map((l, i) => (i === 0 ? first : rest) + l.replace(/^\((Did you mean .*)\)$/, "$1")).join("\n")}\n`;
}

/** The CommandFactory of `program`: every subcommand with its errors as `ovl: <command>: <what>`, and a pointer to its own help. */
export function commandFactory(program: Command): CommandFactory {
  return (name: string) =>
    program
      .command(name)
      .configureOutput({ outputError: (str, write) => write(prefixLines(str.replace(/^error: /, ""), `ovl: ${name}: `, "ovl: ")) })
      .showHelpAfterError(`ovl: hint: run 'ovl ${name} --help' for usage`);
}

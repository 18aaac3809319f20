/** `ovl completion`: prints a bash, zsh or fish completion script made from the program's own commands and options. */
import type { Command } from "commander";
import type { CommandFactory } from "../command.js";
import { completionScript } from "../docs.js";
import { UsageError } from "../errors.js";

/** Registers `completion` with `command(name)`; the script describes `program`, every command registered on it. */
export function addCompletionCommand(command: CommandFactory, program: Command): void {
  command("completion")
    .description("print a shell completion script: bash, zsh or fish")
    .argument("<shell>", "bash, zsh or fish")
    .action((shell: string) => {
      if (shell !== "bash" && shell !== "zsh" && shell !== "fish") {
        throw new UsageError(`completion: no script for '${shell}'`, "ovl completion bash|zsh|fish");
      }
      process.stdout.write(completionScript(program, shell));
    });
}

/** `ovl demo`: registers the live tour of how an overlay works; its code (src/sandbox/demo.ts) loads when it runs. */
import type { CommandFactory } from "../command.js";
import { EXIT } from "../errors.js";

/** Registers `demo` with `command(name)`, the CLI's factory for subcommands. */
export function addDemoCommand(command: CommandFactory): void {
  command("demo")
    .description("show how an overlay works, live, in a temporary directory (as root, or in a user namespace)")
    .option("--pause", "stop before unmounting, until Enter is pressed, to look around")
    .action(async (opts: { pause?: boolean }) => {
      const { demoCommand } = await import("../../sandbox/demo.js");
      const result = await demoCommand(opts);
      if (typeof result === "string") {
        // Interrupted, and cleaned up: die of the same signal, so that the caller sees the interrupt.
        process.kill(process.pid, result);
        await new Promise((r) => setTimeout(r, 1000));
      }
      process.exitCode = typeof result === "number" ? result : EXIT.FAILURE;
    });
}

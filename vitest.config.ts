import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Native addon + real mounts: separate processes keep a crash or a stuck syscall to one file.
    pool: "forks",
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});

/**
 * Side-by-side measurement on a noisy machine: contestants take turns within every round (ABBA order, so
 * neither always runs first), and each figure is a median over all rounds.
 */

export function quantile(samples, q) {
  if (samples.length === 0) return NaN;
  const s = [...samples].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

export const median = (samples) => quantile(samples, 0.5);

/**
 * Runs `rounds` rounds; in each, every contestant's `run()` once, the order reversed on odd rounds.
 * `run()` returns one sample (ms) or an array of samples (a batch of cycles). Returns the samples per
 * contestant name, pooled over all rounds.
 */
export async function alternate(rounds, contestants) {
  const samples = Object.fromEntries(contestants.map((c) => [c.name, []]));
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? contestants : [...contestants].reverse();
    for (const c of order) {
      const got = await c.run();
      if (Array.isArray(got)) samples[c.name].push(...got);
      else samples[c.name].push(got);
    }
  }
  return samples;
}

/** Times one call (sync or async) in ms. */
export async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/* Prometheus text exposition in the browser: parse a scrape, add up series, compute
 * rates between two scrapes and quantiles of histograms the way PromQL's
 * histogram_quantile does (linear interpolation inside the bucket). No dependencies. */

function parseValue(text) {
  if (text === "NaN") return NaN;
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

/** The samples of a scrape: [{name, labels: {k: v}, value}], comments skipped. */
export function parse(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line[0] === "#") continue;
    const brace = line.indexOf("{");
    const space = line.search(/\s/);
    const labels = {};
    let name;
    let rest;
    if (brace !== -1 && (space === -1 || brace < space)) {
      name = line.slice(0, brace);
      let i = brace + 1;
      while (i < line.length && line[i] !== "}") {
        while (line[i] === "," || line[i] === " ") i++;
        if (line[i] === "}") break;
        const eq = line.indexOf("=", i);
        if (eq === -1) break;
        const key = line.slice(i, eq).trim();
        i = eq + 2; // past '="'
        let value = "";
        while (i < line.length && line[i] !== '"') {
          if (line[i] === "\\" && i + 1 < line.length) {
            const next = line[i + 1];
            value += next === "n" ? "\n" : next;
            i += 2;
          } else {
            value += line[i];
            i += 1;
          }
        }
        labels[key] = value;
        i += 1; // past the closing quote
      }
      rest = line.slice(i + 1).trim();
    } else {
      if (space === -1) continue;
      name = line.slice(0, space);
      rest = line.slice(space + 1).trim();
    }
    const value = parseValue(rest.split(/\s+/)[0]);
    if (name) samples.push({ name, labels, value });
  }
  return samples;
}

function matches(labels, filter) {
  return !filter || filter(labels);
}

/** Every sample named `name` whose labels pass `filter`. */
export function select(samples, name, filter) {
  return samples.filter((s) => s.name === name && matches(s.labels, filter));
}

/** The sum of the samples named `name` (0 when there are none). */
export function sum(samples, name, filter) {
  return select(samples, name, filter).reduce((total, s) => total + s.value, 0);
}

/** Sums of `name` grouped by one label: {labelValue: sum}. */
export function sumBy(samples, name, label, filter) {
  const out = {};
  for (const s of select(samples, name, filter)) {
    const key = s.labels[label];
    out[key] = (out[key] || 0) + s.value;
  }
  return out;
}

/** The cumulative buckets of histogram `base` (the `_bucket` series), added up over
 * the series passing `filter`: [{le, count}] sorted by le, +Inf last. */
export function buckets(samples, base, filter) {
  const byLe = new Map();
  for (const s of select(samples, base + "_bucket", filter)) {
    const le = parseValue(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]).map(([le, count]) => ({ le, count }));
}

/** The observations between two scrapes of the same histogram: `newer - older`, bucket
 * by bucket. A counter that went down (the server restarted) gives `newer` itself. */
export function subtract(newer, older) {
  if (!older || !older.length) return newer;
  const before = new Map(older.map((b) => [b.le, b.count]));
  const out = newer.map((b) => ({ le: b.le, count: b.count - (before.get(b.le) || 0) }));
  return out.some((b) => b.count < 0) ? newer : out;
}

/** PromQL's histogram_quantile(q) over cumulative buckets; NaN without observations. */
export function quantile(q, bucketList) {
  const list = bucketList.filter((b) => !Number.isNaN(b.count));
  if (list.length < 2 || list[list.length - 1].le !== Infinity) return NaN;
  const total = list[list.length - 1].count;
  if (!(total > 0)) return NaN;
  if (q <= 0) return -Infinity;
  if (q >= 1) return Infinity;
  let rank = q * total;
  let b = list.findIndex((bucket) => bucket.count >= rank);
  if (b === -1) b = list.length - 1;
  if (b === list.length - 1) return list[list.length - 2].le;
  if (b === 0 && list[0].le <= 0) return list[0].le;
  let start = 0;
  const end = list[b].le;
  let count = list[b].count;
  if (b > 0) {
    start = list[b - 1].le;
    count -= list[b - 1].count;
    rank -= list[b - 1].count;
  }
  return start + (end - start) * (rank / count);
}

/** Per-second rate of a counter between two scrapes taken `seconds` apart. */
export function rate(newer, older, seconds) {
  if (!(seconds > 0)) return NaN;
  const delta = newer - older;
  return (delta < 0 ? newer : delta) / seconds;
}

#!/usr/bin/env bash
# Builds static/vendor/ (committed) from the page's npm packages, exactly as
# pinned by static/package-lock.json:
#   - libs.js: socket.io-client, markdown-it (+ footnotes, math, task lists), KaTeX,
#     highlight.js (common languages) and DOMPurify, bundled and minified by
#     the lockfile's esbuild into one script that sets the global `ChatLibs`;
#   - katex.css and the KaTeX_*.woff2 fonts it names (the page loads them only
#     once a reply contains math).
# The output depends only on the lockfile and static/vendor.entry.js, so the
# same inputs give the same bytes; scripts/test.sh rebuilds and compares.
#
#   scripts/vendor.sh           rebuild static/vendor/
#   scripts/vendor.sh --check   rebuild into a temp folder and fail if it
#                               differs from the committed static/vendor/
set -euo pipefail
cd "$(dirname "$0")/../static"

check=0
[ "${1:-}" = --check ] && check=1

# npm ci again only when the lockfile changed since the last install.
if ! cmp -s package-lock.json node_modules/.installed-lock.json 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.installed-lock.json
fi

out=vendor
if [ "$check" = 1 ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
else
  rm -rf vendor
  mkdir -p vendor
fi

# markdown-it-texmath require()s katex (the CommonJS build) while the entry
# imports it (the ES build): the alias makes both the same single copy.
node_modules/.bin/esbuild vendor.entry.js --bundle --minify --format=iife \
  --global-name=ChatLibs --target=es2020 --platform=browser --charset=utf8 \
  --legal-comments=eof --log-level=warning \
  --alias:katex=katex/dist/katex.mjs --outfile="$out/libs.js"

# KaTeX's stylesheet with its fonts beside it: woff2 only (every browser that
# runs the page reads it), so the woff/ttf fallbacks are dropped.
node - "$out" <<'JS'
const fs = require('node:fs');
const path = require('node:path');
const out = process.argv[2];
const dist = 'node_modules/katex/dist';
let css = fs.readFileSync(path.join(dist, 'katex.min.css'), 'utf8');
css = css.replace(/src:url\(fonts\/([\w-]+\.woff2)\) format\("woff2"\)(?:,url\([^)]*\) format\("[a-z]+"\))*/g,
  (_, file) => `src:url(${file}) format("woff2")`);
if (/url\(fonts\//.test(css)) throw new Error('katex.min.css: a font URL was not rewritten');
fs.writeFileSync(path.join(out, 'katex.css'), css);
for (const file of fs.readdirSync(path.join(dist, 'fonts')).sort()) {
  if (file.endsWith('.woff2')) fs.copyFileSync(path.join(dist, 'fonts', file), path.join(out, file));
}
JS

if [ "$check" = 1 ]; then
  if ! diff -r -q vendor "$out" >&2; then
    echo "static/vendor/ differs from what scripts/vendor.sh builds from static/package-lock.json:" >&2
    echo "run scripts/vendor.sh and commit static/vendor/ (and the lockfile)." >&2
    exit 1
  fi
  echo "static/vendor/ matches the lockfile"
else
  ( cd vendor && ls -l ) | awk 'NR > 1 { print $5, $9 }'
  printf 'libs.js gzipped: %s bytes\n' "$(gzip -9 -n -c vendor/libs.js | wc -c)"
fi

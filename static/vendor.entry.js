// The page's third-party libraries, bundled by scripts/vendor.sh (esbuild)
// into static/vendor/libs.js as the global `ChatLibs`. Only this list is
// bundled; the page's own code uses them through that global.
export { io } from 'socket.io-client';
export { default as MarkdownIt } from 'markdown-it';
export { default as markdownItFootnote } from 'markdown-it-footnote';
export { default as markdownItTexmath } from 'markdown-it-texmath';
export { default as markdownItTaskLists } from 'markdown-it-task-lists';
export { default as katex } from 'katex';
// The common languages only (about 35), not all 190.
export { default as hljs } from 'highlight.js/lib/common';
export { default as DOMPurify } from 'dompurify';

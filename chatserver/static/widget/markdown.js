// Assistant answers are markdown. Model output is untrusted: raw HTML in it is shown as
// text, images become links (nothing is loaded from a URL a model chose), and whatever HTML
// marked produces goes through DOMPurify before it reaches the page.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escape(text) {
  return String(text).replace(/[&<>"']/g, (char) => ESCAPES[char]);
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  async: false,
  renderer: {
    html({ text }) {
      return escape(text);
    },
    image({ href, text }) {
      return `<a href="${escape(href)}">${escape(text || href)}</a>`;
    },
  },
});

const ALLOWED_TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
  "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td", "th",
  "thead", "tr", "ul",
];
const ALLOWED_ATTR = ["href", "title", "start", "align", "class"];

const purify = DOMPurify(window);
purify.addHook("uponSanitizeAttribute", (_node, data) => {
  // Only marked's `language-xyz` on code blocks: no class can borrow the widget's styles.
  if (data.attrName === "class" && !/^language-[\w+-]+$/.test(data.attrValue)) {
    data.keepAttr = false;
  }
});
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** A DocumentFragment of safe HTML for the markdown `text`. */
export function renderMarkdown(text) {
  const html = marked.parse(text);
  return purify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  });
}

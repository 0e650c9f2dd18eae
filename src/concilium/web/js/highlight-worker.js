// Code blocks are coloured here, off the page's main thread: loading highlight.js and
// running it on a long block never holds up scrolling or typing. highlight.js escapes the
// code it returns as HTML.
import hljs from "/assets/vendor/highlight.mjs";

onmessage = ({ data }) => {
  const { id, code, language } = data;
  const known = language && hljs.getLanguage(language);
  const result = known
    ? hljs.highlight(code, { language, ignoreIllegals: true })
    : hljs.highlightAuto(code);
  postMessage({ id, html: result.value, language: result.language || "" });
};

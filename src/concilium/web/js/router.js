// Views live in the address after #: #/chat/<id>, #/knowledge/<collection>, #/admin/<tab>.

/** The address after # as a view and its parameters: #/chat/<id> → {view, args, query}. */
export function parseRoute(hash = location.hash) {
  const [path, search = ""] = hash.replace(/^#\/?/, "").split("?");
  const [view = "chat", ...args] = path.split("/").filter(Boolean);
  return { view, args, query: new URLSearchParams(search) };
}

export function navigate(path) {
  if (location.hash !== `#${path}`) location.hash = path;
}

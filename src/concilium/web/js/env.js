// Libraries published for bundlers read process.env.NODE_ENV (@tanstack/virtual-core does);
// without a build step the page says "production" itself, before any of them loads.
globalThis.process ??= { env: { NODE_ENV: "production" } };

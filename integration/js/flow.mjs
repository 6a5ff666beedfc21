#!/usr/bin/env node
// flow.mjs — one real OpenID Connect authorization-code flow, driven by a real
// relying-party library (openid-client v6) and a real browser (Debian's
// Chromium through playwright-core), for caddy-par's end-to-end tests.
//
//   node integration/js/flow.mjs <config.json>
//
// Contract with the Go test harness:
//   * exactly ONE JSON object is written to stdout, at the very end;
//   * every log line goes to stderr;
//   * exit code 0 whenever the flow ran, even if the flow itself failed (the
//     JSON's `ok`, `outcome`, `stage` and `error` say what happened); exit
//     code 2 only for harness-level problems (unreadable config, crash in this
//     script's own plumbing). Even then a JSON object is printed if possible.
//   * everything is bounded by `timeoutMs`; the process always exits by itself.
//
// See NOTES.md next to this file for the full config/output schema.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';
import * as client from 'openid-client';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const T0 = Date.now();

// Chromium flags required by the project: no GPU, no QUIC, and nothing that
// phones home (the machines reach only package registries; background
// networking would only add noise to `browserUrls`).
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const TEXT_SNIPPET_MAX = 4000;

// The browser must never leave this machine (the only network is loopback,
// and IdP themes / dev pages like to @import web fonts from the internet).
// Two layers: Chromium's resolver maps every host name except localhost (and
// any config.allowHosts) to NOTFOUND, and a Playwright route aborts every
// request to a non-allowed host before it is sent; aborted requests are
// reported in `blockedRequests`.
function isLoopbackHost(hostname) {
  const h = hostname.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

function log(...args) {
  const ts = ((Date.now() - T0) / 1000).toFixed(3).padStart(7);
  console.error(`[flow ${ts}s]`, ...args);
}

// Error message without stack, including the useful bits openid-client /
// oauth4webapi attach (code, OAuth error, error_description, HTTP status).
function errMessage(err) {
  if (err == null) return String(err);
  if (typeof err !== 'object') return String(err);
  let msg = err.message || String(err);
  const extra = [];
  if (err.code) extra.push(`code=${err.code}`);
  if (err.error) extra.push(`error=${err.error}`);
  if (err.error_description) extra.push(`error_description=${err.error_description}`);
  if (err.status) extra.push(`status=${err.status}`);
  if (err.cause && err.cause !== err) {
    const c = err.cause;
    if (c && typeof c === 'object' && !(c instanceof Response)) {
      if (c.message) {
        if (c.message !== err.message) extra.push(`cause=${c.message}`);
      }
      else if (c.error) extra.push(`cause=${c.error}${c.error_description ? `: ${c.error_description}` : ''}`);
    }
  }
  if (extra.length) msg += ` (${extra.join(', ')})`;
  return msg;
}

// URLSearchParams -> plain object; repeated parameters become arrays.
function paramsToObject(sp) {
  const out = {};
  for (const [k, v] of sp.entries()) {
    if (Object.hasOwn(out, k)) {
      out[k] = Array.isArray(out[k]) ? [...out[k], v] : [out[k], v];
    } else {
      out[k] = v;
    }
  }
  return out;
}

function tryJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function readPkgVersion(name) {
  try {
    const p = path.join(HERE, 'node_modules', name, 'package.json');
    return JSON.parse(fs.readFileSync(p, 'utf8')).version;
  } catch {
    return null;
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms}ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

// A JWS's header and claims, decoded without verification (null if it is
// not a JWS).
function decodeJwt(jwt) {
  try {
    const [h, p, sig] = String(jwt).split('.');
    if (sig === undefined) return null;
    const dec = (x) => JSON.parse(Buffer.from(x, 'base64url').toString('utf8'));
    return { header: dec(h), claims: dec(p) };
  } catch {
    return null;
  }
}

// A private JWK from the config as a CryptoKey for signing.
async function importPrivateJwk({ jwk, alg }) {
  return jose.importJWK(jwk, alg);
}

// RFC 9101 §6.1 / RFC 7519 §5.2: the signed request object becomes the
// payload of a JWE to one of the gateway's encryption keys, fetched (through
// the recording fetch) from the JWKS the gateway serves.
async function encryptRequestObject(signed, { jwksUri, alg, enc }, fetchFn, R) {
  const res = await fetchFn(jwksUri, { method: 'GET', headers: { accept: 'application/json' } });
  if (res.status !== 200) throw new Error(`GET ${jwksUri}: status ${res.status}`);
  const jwks = await res.json();
  const kty = alg.startsWith('RSA') ? 'RSA' : alg.startsWith('ECDH') ? 'EC' : null;
  const key = (jwks.keys || []).find(
    (k) => k.kty === kty && (!k.use || k.use === 'enc') && (!k.alg || k.alg === alg)
      && (!k.key_ops || k.key_ops.includes('encrypt') || k.key_ops.includes('wrapKey') || k.key_ops.includes('deriveKey')),
  );
  if (!key) {
    throw new Error(`no ${kty} encryption key for ${alg} in ${jwksUri}: ${JSON.stringify((jwks.keys || []).map((k) => ({ kty: k.kty, kid: k.kid, alg: k.alg, use: k.use })))}`);
  }
  const pub = await jose.importJWK(key, alg);
  const header = { alg, enc, cty: 'JWT', ...(key.kid ? { kid: key.kid } : {}) };
  const jwe = await new jose.CompactEncrypt(new TextEncoder().encode(signed)).setProtectedHeader(header).encrypt(pub);
  R.requestObject.encrypted = { header, jwksUri, keyKid: key.kid ?? null, keyAlg: key.alg ?? null, parts: jwe.split('.').length };
  return jwe;
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

class HarnessError extends Error {}

function loadConfig(file) {
  if (!file) throw new HarnessError('usage: node flow.mjs <config.json>');
  let raw;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new HarnessError(`cannot read config ${file}: ${e.message}`);
  }
  const need = ['issuer', 'clientId', 'redirectUri'];
  for (const k of need) {
    if (typeof raw[k] !== 'string' || raw[k] === '') throw new HarnessError(`config: "${k}" is required (string)`);
  }
  const login = raw.login || {};
  const cfg = {
    issuer: raw.issuer,
    clientId: raw.clientId,
    clientSecret: raw.clientSecret || undefined,
    // Optional override; default: client_secret_basic with a secret, none without.
    clientAuth: raw.clientAuth || (raw.clientSecret ? 'client_secret_basic' : 'none'),
    redirectUri: raw.redirectUri,
    scope: raw.scope || 'openid',
    usePAR: raw.usePAR !== false,
    extraParams: raw.extraParams || {},
    login: {
      username: login.username,
      password: login.password,
      usernameSelector: login.usernameSelector || '#username',
      passwordSelector: login.passwordSelector || '#password',
      submitSelector: login.submitSelector || 'button[type=submit]',
      // Optional: a consent / approval button to click after the login (Dex's
      // approval screen, oidc-provider's dev consent page). Clicked whenever it
      // is visible and the callback has not been reached yet.
      consentSelector: login.consentSelector || null,
    },
    secondVisit: raw.secondVisit === true,
    // The second visit starts no earlier than this many ms after the first
    // navigation to the authorization URL (e.g. after the gateway's
    // reuse_grace has ended).
    secondVisitAfterMs: Number(raw.secondVisitAfterMs) > 0 ? Number(raw.secondVisitAfterMs) : 0,
    // Reload the login page once when it first shows (a user pressing F5 on
    // a login form served at the authorization URL), and carry on with the
    // reloaded page.
    reloadLoginPage: raw.reloadLoginPage === true,
    // Then, before logging in, open the same authorization URL in a second,
    // fresh browser context (no cookies): another browser with the URL.
    otherContextVisit: raw.otherContextVisit === true,
    refresh: raw.refresh === true,
    artifactsDir: raw.artifactsDir || null,
    timeoutMs: Number(raw.timeoutMs) > 0 ? Number(raw.timeoutMs) : 60000,
    // How long the page must be quiet (no main-frame activity, document
    // complete) before we call it "settled" on a page that is neither the
    // login form nor the callback (e.g. the gateway's error page).
    settleMs: Number(raw.settleMs) > 0 ? Number(raw.settleMs) : 1500,
    chromiumPath: raw.chromiumPath || process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    // Extra non-loopback host names the browser may reach (e.g. test hosts in
    // a network namespace). Loopback is always allowed.
    allowHosts: Array.isArray(raw.allowHosts) ? raw.allowHosts.map(String) : [],
    // Verify the id_token's JWS signature against the discovered jwks_uri
    // (openid-client skips this by default for token-endpoint responses).
    verifyIdTokenSignature: raw.verifyIdTokenSignature !== false,
    // Send the browser to this origin instead of the discovered one (a
    // second gateway sharing the store: push at one, redeem at the other).
    authorizationOrigin: raw.authorizationOrigin || null,
    // private_key_jwt at the PAR endpoint: {jwk (private JWK with kid), alg}.
    clientKey: raw.clientKey || null,
    // A different client authentication for the token endpoint (a second
    // openid-client Configuration): e.g. client_secret_basic with the secret
    // the upstream knows, while the gateway knows the client by its keys.
    tokenClientAuth: raw.tokenClientAuth || null,
    tokenClientSecret: raw.tokenClientSecret || undefined,
    // Signed request object (RFC 9101) pushed instead of the plain
    // parameters: {jwk (private JWK with kid), alg}.
    requestObjectKey: raw.requestObjectKey || null,
    // Encrypt the signed request object (nested JWT) to a key from
    // jwksUri: {jwksUri, alg, enc}.
    requestObjectEncryption: raw.requestObjectEncryption || null,
    // DPoP (RFC 9449): a proof on the push (RFC 9449 §10); tokenRequest
    // also on the token request (and refresh), with the same key.
    // jktParam: also send the key's thumbprint as the dpop_jkt authorization
    // request parameter (RFC 9449 §10); push: false leaves the proof off the
    // push (then dpop_jkt is the only binding).
    // Negative scenarios at the token endpoint (issue 10): wrongVerifier
    // sends another code_verifier than the one whose challenge was pushed;
    // replayCode redeems the code a second time after the tokens came.
    wrongVerifier: raw.wrongVerifier === true,
    replayCode: raw.replayCode === true,
    dpop: raw.dpop
      ? {
        alg: raw.dpop.alg || 'ES256',
        tokenRequest: raw.dpop.tokenRequest !== false,
        push: raw.dpop.push !== false,
        jktParam: raw.dpop.jktParam === true,
      }
      : null,
  };
  let redirect;
  try {
    redirect = new URL(cfg.redirectUri);
  } catch {
    throw new HarnessError(`config: redirectUri is not a URL: ${cfg.redirectUri}`);
  }
  if (redirect.protocol !== 'http:' || !redirect.port) {
    throw new HarnessError('config: redirectUri must be http://HOST:PORT/path (flow.mjs serves it itself)');
  }
  if (!['none', 'client_secret_basic', 'client_secret_post', 'private_key_jwt'].includes(cfg.clientAuth)) {
    throw new HarnessError(`config: unsupported clientAuth ${cfg.clientAuth}`);
  }
  if (cfg.clientAuth === 'private_key_jwt') {
    if (!cfg.clientKey?.jwk?.d || !cfg.clientKey?.alg) {
      throw new HarnessError('config: clientAuth private_key_jwt needs clientKey {jwk (private), alg}');
    }
  } else if (cfg.clientAuth !== 'none' && !cfg.clientSecret) {
    throw new HarnessError(`config: clientAuth ${cfg.clientAuth} needs clientSecret`);
  }
  if (cfg.tokenClientAuth) {
    if (!['none', 'client_secret_basic', 'client_secret_post'].includes(cfg.tokenClientAuth)) {
      throw new HarnessError(`config: unsupported tokenClientAuth ${cfg.tokenClientAuth}`);
    }
    if (cfg.tokenClientAuth !== 'none' && !cfg.tokenClientSecret) {
      throw new HarnessError(`config: tokenClientAuth ${cfg.tokenClientAuth} needs tokenClientSecret`);
    }
  }
  if (cfg.requestObjectKey && (!cfg.requestObjectKey.jwk?.d || !cfg.requestObjectKey.alg)) {
    throw new HarnessError('config: requestObjectKey needs {jwk (private), alg}');
  }
  if (cfg.requestObjectEncryption) {
    const e = cfg.requestObjectEncryption;
    if (!cfg.requestObjectKey) throw new HarnessError('config: requestObjectEncryption needs requestObjectKey (the object is signed, then encrypted)');
    if (!e.jwksUri || !e.alg || !e.enc) throw new HarnessError('config: requestObjectEncryption needs {jwksUri, alg, enc}');
  }
  if (cfg.requestObjectKey && !cfg.usePAR) {
    throw new HarnessError('config: requestObjectKey is only supported with usePAR (the object is pushed)');
  }
  return cfg;
}

// ---------------------------------------------------------------------------
// Loopback callback server (the redirect_uri)
// ---------------------------------------------------------------------------

function startCallbackServer(redirectUri, onCallback) {
  const ru = new URL(redirectUri);
  const server = http.createServer((req, res) => {
    const full = new URL(req.url, `${ru.protocol}//${ru.host}`);
    if (req.method !== 'GET' || full.pathname !== ru.pathname) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    const params = paramsToObject(full.searchParams);
    onCallback(full.href, params);
    const rows = Object.entries(params)
      .map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(k === 'code' ? '(present)' : v)}</td></tr>`)
      .join('');
    const title = params.error ? 'Callback: authorization error' : 'Callback received';
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(
      `<!doctype html><html><head><title>${title}</title></head><body>` +
        `<h1 id="callback-title">${title}</h1><table id="callback-params">${rows}</table></body></html>`,
    );
  });
  // Chromium keeps connections alive; do not let them hold the process.
  server.keepAliveTimeout = 1000;
  return new Promise((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`callback server cannot listen on ${ru.host}: ${e.message}`)));
    server.listen(Number(ru.port), ru.hostname, () => resolve(server));
  });
}

// ---------------------------------------------------------------------------
// The flow
// ---------------------------------------------------------------------------

async function runFlow(cfg, R, S) {
  const timings = R.timings;
  const mark = (name, since) => {
    timings[name] = Date.now() - since;
  };

  // --- callback server ------------------------------------------------------
  S.stage = 'callback-server';
  S.callbacks = [];
  S.server = await startCallbackServer(cfg.redirectUri, (href, params) => {
    log('callback received:', Object.keys(params).join(','));
    S.callbacks.push({ href, params, at: Date.now() - T0, phase: S.phase });
  });

  // --- discovery through the gateway -----------------------------------------
  // Every HTTP request openid-client makes goes through this recording fetch
  // (the customFetch symbol, passed in discovery()'s options, is inherited by
  // the resulting Configuration). This is how we see exactly what was PUSHED:
  // the PAR request body, which in a PAR flow never appears in a URL.
  S.stage = 'discovery';
  let t = Date.now();
  const recordingFetch = async (url, options) => {
    const started = Date.now();
    const entry = { method: options?.method || 'GET', url };
    const headers = new Headers(options?.headers || {});
    const body = options?.body;
    const isPar = S.parEndpoint && url === S.parEndpoint;
    if (body instanceof URLSearchParams) {
      if (isPar) {
        entry.bodyParams = paramsToObject(body);
      } else {
        // Token requests carry codes/verifiers/refresh tokens: names only.
        entry.bodyParamNames = [...new Set(body.keys())];
        if (body.has('grant_type')) entry.grantType = body.get('grant_type');
      }
    }
    const auth = headers.get('authorization');
    entry.authScheme = auth ? auth.split(' ')[0] : null;
    const dpopProof = headers.get('dpop');
    entry.dpop = dpopProof ? decodeJwt(dpopProof) : null;
    R.httpExchanges.push(entry);
    let res;
    try {
      res = await fetch(url, options);
    } catch (e) {
      entry.networkError = errMessage(e);
      throw e;
    }
    entry.status = res.status;
    entry.ms = Date.now() - started;
    if (isPar || url === S.discoveryUrl || res.status >= 400) {
      // Read a clone: openid-client consumes the original.
      const text = await res.clone().text().catch(() => '');
      entry.responseBody = tryJSON(text);
    }
    if (isPar) {
      R.parRequest = {
        url,
        method: entry.method,
        contentType: headers.get('content-type'),
        authScheme: entry.authScheme,
        bodyLength: body instanceof URLSearchParams ? body.toString().length : null,
        // The DPoP proof's header and claims (RFC 9449 §4.2), decoded.
        dpop: entry.dpop,
        // private_key_jwt: the client assertion's header and claims, decoded.
        clientAssertion: body instanceof URLSearchParams && body.has('client_assertion')
          ? decodeJwt(body.get('client_assertion'))
          : null,
      };
      R.pushedParams = entry.bodyParams;
      R.parResponse = {
        status: res.status,
        body: entry.responseBody,
        contentType: res.headers.get('content-type'),
        cacheControl: res.headers.get('cache-control'),
      };
    }
    return res;
  };

  const issuerUrl = new URL(cfg.issuer);
  S.discoveryUrl = new URL(
    `${issuerUrl.pathname.replace(/\/$/, '')}/.well-known/openid-configuration`,
    issuerUrl,
  ).href;
  const secretAuth = (method, secret) => {
    if (method === 'none') return client.None();
    if (method === 'client_secret_post') return client.ClientSecretPost(secret);
    return client.ClientSecretBasic(secret);
  };
  let clientAuth;
  if (cfg.clientAuth === 'private_key_jwt') {
    const key = await importPrivateJwk(cfg.clientKey);
    clientAuth = client.PrivateKeyJwt({ key, kid: cfg.clientKey.jwk.kid });
  } else {
    clientAuth = secretAuth(cfg.clientAuth, cfg.clientSecret);
  }
  const discoveryOptions = {
    // Everything is plain http on loopback.
    execute: [client.allowInsecureRequests],
    [client.customFetch]: recordingFetch,
    timeout: Math.max(5, Math.ceil(cfg.timeoutMs / 2000)),
  };
  // One openid-client Configuration uses one client authentication for
  // every endpoint. `config` authenticates at the PAR endpoint (the
  // gateway); with tokenClientAuth a second Configuration, from a second
  // discovery of the same issuer, authenticates at the token endpoint (the
  // upstream, through the gateway's reverse proxy) and validates the
  // authorization response, the tokens and the id_token.
  const config = await client.discovery(
    issuerUrl,
    cfg.clientId,
    cfg.clientAuth === 'private_key_jwt' ? undefined : cfg.clientSecret,
    clientAuth,
    discoveryOptions,
  );
  const tokenConfig = cfg.tokenClientAuth
    ? await client.discovery(
      issuerUrl,
      cfg.clientId,
      cfg.tokenClientSecret,
      secretAuth(cfg.tokenClientAuth, cfg.tokenClientSecret),
      discoveryOptions,
    )
    : config;
  mark('discoveryMs', t);
  if (cfg.verifyIdTokenSignature) client.enableNonRepudiationChecks(tokenConfig);
  const md = config.serverMetadata();
  S.parEndpoint = md.pushed_authorization_request_endpoint;
  R.discovery = {
    url: S.discoveryUrl,
    issuer: md.issuer,
    authorization_endpoint: md.authorization_endpoint,
    token_endpoint: md.token_endpoint,
    jwks_uri: md.jwks_uri,
    pushed_authorization_request_endpoint: md.pushed_authorization_request_endpoint ?? null,
    require_pushed_authorization_requests: md.require_pushed_authorization_requests ?? null,
    authorization_response_iss_parameter_supported: md.authorization_response_iss_parameter_supported ?? null,
    code_challenge_methods_supported: md.code_challenge_methods_supported ?? null,
    supportsPKCE: config.serverMetadata().supportsPKCE(),
    request_object_signing_alg_values_supported: md.request_object_signing_alg_values_supported ?? null,
    request_object_encryption_alg_values_supported: md.request_object_encryption_alg_values_supported ?? null,
    request_object_encryption_enc_values_supported: md.request_object_encryption_enc_values_supported ?? null,
    dpop_signing_alg_values_supported: md.dpop_signing_alg_values_supported ?? null,
    token_endpoint_auth_methods_supported: md.token_endpoint_auth_methods_supported ?? null,
  };
  log('discovered issuer', md.issuer, 'PAR endpoint', S.parEndpoint ?? '(none)');

  // --- authorization request -------------------------------------------------
  S.stage = cfg.usePAR ? 'par' : 'authorization-url';
  t = Date.now();
  const codeVerifier = client.randomPKCECodeVerifier();
  const codeChallenge = await client.calculatePKCECodeChallenge(codeVerifier);
  const nonce = client.randomNonce();
  const state = client.randomState();
  R.nonce = nonce;
  R.state = state;
  const params = {
    redirect_uri: cfg.redirectUri,
    scope: cfg.scope,
    code_challenge: codeChallenge,
    code_challenge_method: 'S256',
    nonce,
    state,
  };
  for (const [k, v] of Object.entries(cfg.extraParams)) {
    // Objects (claims, authorization_details) are sent as JSON strings.
    params[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  R.requestedParams = { ...params };
  R.requestedParamsLength = new URLSearchParams(params).toString().length;

  // DPoP: one key pair for the push and the token request; a handle per
  // Configuration (a handle caches server nonces per client).
  let dpopPush;
  let dpopToken;
  if (cfg.dpop) {
    const kp = await client.randomDPoPKeyPair(cfg.dpop.alg);
    const handle = client.getDPoPHandle(config, kp);
    if (cfg.dpop.push) dpopPush = handle;
    if (cfg.dpop.tokenRequest) dpopToken = tokenConfig === config ? handle : client.getDPoPHandle(tokenConfig, kp);
    const pub = await crypto.subtle.exportKey('jwk', kp.publicKey);
    R.dpop = { alg: cfg.dpop.alg, jkt: await jose.calculateJwkThumbprint(pub, 'sha256'), tokenRequest: cfg.dpop.tokenRequest, push: cfg.dpop.push, jktParam: cfg.dpop.jktParam };
    if (cfg.dpop.jktParam) params.dpop_jkt = R.dpop.jkt;
  }

  let authUrl;
  if (cfg.usePAR) {
    let pushed = params;
    if (cfg.requestObjectKey) {
      // RFC 9101 inside PAR (RFC 9126 §3): openid-client signs the whole
      // authorization request as a request object (iss, aud = issuer,
      // client_id, exp = nbf + 60 s, jti, typ oauth-authz-req+jwt); only
      // client_id and request are pushed, plus the client authentication.
      const key = await importPrivateJwk(cfg.requestObjectKey);
      const jarUrl = await client.buildAuthorizationUrlWithJAR(config, params, { key, kid: cfg.requestObjectKey.jwk.kid });
      let request = jarUrl.searchParams.get('request');
      R.requestObject = { signed: decodeJwt(request), encrypted: null, length: request.length };
      if (cfg.requestObjectEncryption) {
        request = await encryptRequestObject(request, cfg.requestObjectEncryption, recordingFetch, R);
        R.requestObject.length = request.length;
      }
      pushed = { client_id: cfg.clientId, request };
    }
    // openid-client refuses this unless discovery advertised
    // pushed_authorization_request_endpoint — part of the proof that the
    // gateway's discovery rewrite works.
    authUrl = await client.buildAuthorizationUrlWithPAR(config, pushed, dpopPush ? { DPoP: dpopPush } : undefined);
  } else {
    authUrl = client.buildAuthorizationUrl(config, params);
  }
  if (cfg.authorizationOrigin) {
    const o = new URL(cfg.authorizationOrigin);
    authUrl = new URL(authUrl.href);
    authUrl.protocol = o.protocol;
    authUrl.host = o.host;
  }
  mark(cfg.usePAR ? 'parMs' : 'authorizationUrlMs', t);
  R.authorizationUrl = authUrl.href;
  R.authorizationUrlLength = authUrl.href.length;
  R.authorizationUrlParams = paramsToObject(authUrl.searchParams);
  R.requestUri = authUrl.searchParams.get('request_uri');
  log('authorization URL', authUrl.href.length > 300 ? `${authUrl.href.slice(0, 300)}… (${authUrl.href.length} chars)` : authUrl.href);

  // --- browser ---------------------------------------------------------------
  S.stage = 'browser-launch';
  t = Date.now();
  const resolverRules = ['MAP * ~NOTFOUND', 'EXCLUDE localhost', 'EXCLUDE 127.*', 'EXCLUDE [::1]', ...cfg.allowHosts.map((h) => `EXCLUDE ${h}`)].join(', ');
  S.browser = await chromium.launch({
    executablePath: cfg.chromiumPath,
    headless: true,
    args: [...CHROMIUM_ARGS, `--host-resolver-rules=${resolverRules}`],
    timeout: 30000,
  });
  R.versions.chromium = S.browser.version();
  const allowed = new Set(cfg.allowHosts);
  const newContext = async () => {
    const ctx = await S.browser.newContext({ ignoreHTTPSErrors: false });
    await ctx.route(
      (u) => (u.protocol === 'http:' || u.protocol === 'https:' || u.protocol === 'ws:' || u.protocol === 'wss:')
        && !isLoopbackHost(u.hostname) && !allowed.has(u.hostname),
      (route) => {
        R.blockedRequests.push(route.request().url());
        return route.abort('blockedbyclient');
      },
    );
    return ctx;
  };
  const context = await newContext();
  const page = await context.newPage();
  S.page = page;
  mark('browserLaunchMs', t);
  attachRecorders(context, page, R, S);

  // Individual browser actions (fill, click) are bounded too; the overall
  // budget is enforced in main() and by waitProgress()'s deadline.
  page.setDefaultTimeout(Math.min(30000, cfg.timeoutMs));

  S.stage = 'authorize';
  S.phase = 'main';
  t = Date.now();
  const authorizeStart = Date.now();
  await navigate(page, authUrl.href, R, S);
  let step = await waitProgress(page, cfg, S, { wantLogin: true, wantConsent: true, callbacksBefore: 0 });
  log('after authorization request:', step);

  // --- reload of the login page, another browser ----------------------------
  // The login form is served at the authorization URL (Keycloak): a reload
  // sends the used request_uri again. The gateway's reuse_grace lets this
  // browser (its grace cookie) redeem it again; another browser must not.
  if (cfg.reloadLoginPage) {
    S.stage = 'reload';
    R.reload = { attempted: true, before: await pageInfo(page, S), graceCookies: await graceCookies(context) };
    if (step !== 'login') {
      throw Object.assign(new Error(`reloadLoginPage: the authorization request led to ${step}, not a login page`), { outcome: 'error_page' });
    }
    S.phase = 'reload';
    const reqBefore = R.browserRequests.length;
    const rt = Date.now();
    S.lastActivity = Date.now();
    let navError = null;
    try {
      await page.reload({ waitUntil: 'domcontentloaded', timeout: Math.max(1000, S.deadline - Date.now()) });
    } catch (e) {
      navError = errMessage(e).split('\n')[0];
      R.navigationErrors.push({ phase: S.phase, url: page.url(), error: navError });
    }
    step = await waitProgress(page, cfg, S, { wantLogin: true, wantConsent: true, callbacksBefore: 0 });
    const info = await pageInfo(page, S);
    Object.assign(R.reload, {
      result: step,
      status: info.status,
      url: info.url,
      title: info.title,
      text: info.text,
      navigationError: navError,
      loginPageSeen: step === 'login',
      afterMs: rt - authorizeStart,
      requests: R.browserRequests.slice(reqBefore).filter((r) => r.navigation).map((r) => ({ method: r.method, url: r.url, status: r.status })),
    });
    await screenshot(page, cfg, 'reloaded.png', R);
    S.phase = 'main';
    log('after reloading the login page:', step);
  }
  if (cfg.otherContextVisit) {
    S.stage = 'other-context';
    const ot = Date.now();
    const other = await newContext();
    try {
      const op = await other.newPage();
      const O = { browserRequests: [], navigations: [], navigationErrors: [] };
      const OS = { phase: 'otherContext', deadline: S.deadline, lastActivity: Date.now(), lastDocument: null, callbacks: S.callbacks };
      attachRecorders(other, op, O, OS);
      const nav = await navigate(op, authUrl.href, O, OS);
      const ostep = await waitProgress(op, cfg, OS, { wantLogin: true, wantConsent: false, callbacksBefore: S.callbacks.length });
      const info = await pageInfo(op, OS);
      R.otherContext = {
        attempted: true,
        result: ostep,
        status: info.status,
        url: info.url,
        title: info.title,
        text: info.text,
        navigationError: nav.error ?? null,
        loginPageSeen: ostep === 'login',
        afterMs: ot - authorizeStart,
        graceCookies: await graceCookies(other),
        urls: [...new Set(O.browserRequests.map((r) => r.url))],
      };
      await screenshot(op, cfg, 'other-context.png', R);
    } finally {
      await other.close().catch(() => {});
    }
    log('other browser context:', R.otherContext.result, R.otherContext.status);
  }

  let consentClicks = 0;
  if (step === 'login') {
    S.stage = 'login';
    R.loginPageSeen = true;
    R.loginPageUrl = page.url();
    R.loginPageTitle = await page.title().catch(() => null);
    mark('loginPageMs', t);
    await screenshot(page, cfg, 'login.png', R);
    if (cfg.login.username == null || cfg.login.password == null) {
      throw Object.assign(new Error('login form displayed but config.login.username/password not set'), { outcome: 'login_failed' });
    }
    await page.locator(cfg.login.usernameSelector).first().fill(String(cfg.login.username));
    await page.locator(cfg.login.passwordSelector).first().fill(String(cfg.login.password));
    S.lastActivity = Date.now();
    await page.locator(cfg.login.submitSelector).first().click();
    step = await waitProgress(page, cfg, S, { wantLogin: false, wantConsent: true, callbacksBefore: 0 });
  }
  // Consent / approval screens (optional, config-driven), at most a few.
  while (step === 'consent' && consentClicks < 3) {
    S.stage = 'consent';
    consentClicks++;
    log('clicking consent', cfg.login.consentSelector);
    S.lastActivity = Date.now();
    await page.locator(cfg.login.consentSelector).first().click();
    step = await waitProgress(page, cfg, S, { wantLogin: false, wantConsent: true, callbacksBefore: 0 });
  }
  R.consentClicks = consentClicks;

  if (step !== 'callback') {
    // Neither the callback nor a usable login form: the browser stopped on
    // some page (gateway error page for the non-PAR enforcement case, an IdP
    // error, or a failed login).
    R.finalPage = await pageInfo(page, S);
    const where = `${R.finalPage.url} (status ${R.finalPage.status ?? '?'}, title ${JSON.stringify(R.finalPage.title)})`;
    if (step === 'timeout') {
      throw Object.assign(new Error(`timed out waiting for the browser at ${where}`), { outcome: 'timeout' });
    }
    const outcome = R.loginPageSeen ? 'login_failed' : 'error_page';
    throw Object.assign(
      new Error(
        R.loginPageSeen
          ? `after submitting the login form the browser settled on ${where} without reaching the callback`
          : `browser settled on ${where} without showing the login form or reaching the callback`,
      ),
      { outcome },
    );
  }

  // --- callback --------------------------------------------------------------
  S.stage = 'callback';
  mark('callbackMs', t);
  const cb = S.callbacks[0];
  R.callback = describeCallback(cb, state);
  await page.waitForLoadState('load', { timeout: 5000 }).catch(() => {});
  await screenshot(page, cfg, 'callback.png', R);
  if (cb.params.error) {
    R.finalPage = await pageInfo(page, S);
    throw Object.assign(
      new Error(`authorization response error: ${cb.params.error}${cb.params.error_description ? `: ${cb.params.error_description}` : ''}`),
      { outcome: 'callback_error' },
    );
  }

  // --- code exchange ---------------------------------------------------------
  // openid-client validates the authorization response (state, RFC 9207 iss
  // when advertised or present), exchanges the code with the PKCE verifier
  // and validates the id_token claims (iss, aud, azp, exp, iat, nonce).
  S.stage = 'token';
  t = Date.now();
  const tokens = await client.authorizationCodeGrant(tokenConfig, new URL(cb.href), {
    pkceCodeVerifier: cfg.wrongVerifier ? client.randomPKCECodeVerifier() : codeVerifier,
    expectedNonce: nonce,
    expectedState: state,
    idTokenExpected: true,
  }, undefined, dpopToken ? { DPoP: dpopToken } : undefined);
  mark('tokenMs', t);
  const claims = tokens.claims();
  R.tokens = {
    present: true,
    tokenType: tokens.token_type ?? null,
    scope: tokens.scope ?? null,
    expiresIn: tokens.expiresIn?.() ?? null,
    accessTokenPresent: !!tokens.access_token,
    idTokenPresent: !!tokens.id_token,
    refreshTokenPresent: !!tokens.refresh_token,
    idTokenClaims: claims ?? null,
    // The grant would have thrown on a bad signature.
    idTokenSignatureVerified: cfg.verifyIdTokenSignature && !!tokens.id_token,
  };
  const aud = claims?.aud;
  R.nonceMatches = claims?.nonce === nonce;
  R.audMatches = Array.isArray(aud) ? aud.includes(cfg.clientId) : aud === cfg.clientId;
  R.issMatches = claims?.iss === md.issuer;
  if (tokens.access_token && tokens.access_token.split('.').length === 3) {
    // Keycloak's access tokens are JWTs: cnf.jkt shows a DPoP binding.
    R.tokens.accessTokenCnf = decodeJwt(tokens.access_token)?.claims?.cnf ?? null;
  }
  log('tokens ok; sub', claims?.sub, 'scope', tokens.scope);

  // --- the same code again --------------------------------------------------
  if (cfg.replayCode) {
    S.stage = 'replay';
    R.replay = { attempted: true, ok: false, error: null, errorCode: null, status: null };
    try {
      await client.authorizationCodeGrant(tokenConfig, new URL(cb.href), {
        pkceCodeVerifier: codeVerifier,
        expectedNonce: nonce,
        expectedState: state,
        idTokenExpected: true,
      }, undefined, dpopToken ? { DPoP: dpopToken } : undefined);
      R.replay.ok = true;
    } catch (e) {
      R.replay.error = errMessage(e);
      R.replay.errorCode = e?.error ?? null;
      R.replay.status = e?.status ?? null;
    }
    log('replayed code:', R.replay.ok ? 'accepted' : R.replay.error);
  }

  // --- refresh ---------------------------------------------------------------
  if (cfg.refresh) {
    S.stage = 'refresh';
    t = Date.now();
    R.refresh = { attempted: true, ok: false };
    if (!tokens.refresh_token) {
      R.refresh.error = 'token response contained no refresh_token (was offline_access granted?)';
      mark('refreshMs', t);
      throw Object.assign(new Error(R.refresh.error), { outcome: 'refresh_failed' });
    }
    try {
      const refreshed = await client.refreshTokenGrant(tokenConfig, tokens.refresh_token, undefined, dpopToken ? { DPoP: dpopToken } : undefined);
      R.refresh.ok = true;
      R.refresh.accessTokenPresent = !!refreshed.access_token;
      R.refresh.newAccessTokenDiffers = !!refreshed.access_token && refreshed.access_token !== tokens.access_token;
      R.refresh.refreshTokenPresent = !!refreshed.refresh_token;
      R.refresh.idTokenPresent = !!refreshed.id_token;
      R.refresh.scope = refreshed.scope ?? null;
    } catch (e) {
      R.refresh.error = errMessage(e);
      throw Object.assign(e, { outcome: 'refresh_failed' });
    } finally {
      mark('refreshMs', t);
    }
  }

  // --- second visit of the same authorization URL ----------------------------
  // The browser still holds the IdP's SSO session, so if the request_uri were
  // replayable the IdP would silently issue a second code: the callback would
  // be hit again. The gateway must refuse it (invalid_request_uri) instead.
  if (cfg.secondVisit) {
    S.stage = 'second-visit';
    S.phase = 'secondVisit';
    const wait = authorizeStart + cfg.secondVisitAfterMs - Date.now();
    if (wait > 0) {
      log(`waiting ${wait} ms before the second visit`);
      await sleep(Math.min(wait, Math.max(0, S.deadline - Date.now() - 10000)));
    }
    t = Date.now();
    const before = S.callbacks.length;
    const reqBefore = R.browserRequests.length;
    const nav = await navigate(page, authUrl.href, R, S);
    const step2 = await waitProgress(page, cfg, S, { wantLogin: true, wantConsent: false, callbacksBefore: before });
    await page.waitForLoadState('load', { timeout: 3000 }).catch(() => {});
    const info = await pageInfo(page, S);
    R.secondVisit = {
      attempted: true,
      afterMs: t - authorizeStart,
      result: step2, // 'settled' | 'callback' | 'login' | 'timeout'
      status: info.status,
      url: info.url,
      title: info.title,
      text: info.text,
      navigationError: nav.error ?? null,
      loginPageSeen: step2 === 'login',
      callback: S.callbacks.length > before ? describeCallback(S.callbacks[before], state) : null,
      // The thing that must never happen with a used request_uri.
      codeIssued: S.callbacks.slice(before).some((c) => !!c.params.code),
      urls: [...new Set(R.browserRequests.slice(reqBefore).map((r) => r.url))],
    };
    await screenshot(page, cfg, 'second-visit.png', R);
    mark('secondVisitMs', t);
    S.phase = 'main';
  }

  R.finalPage = await pageInfo(page, S);
  R.outcome = 'tokens';
  R.ok = true;
}

// The gateway's grace cookies in a browser context, as the browser keeps
// them (Playwright sees HttpOnly cookies too).
async function graceCookies(context) {
  const now = Date.now() / 1000;
  return (await context.cookies())
    .filter((c) => c.name.startsWith('__Secure-oauth_par_'))
    .map((c) => ({
      name: c.name,
      value: c.value,
      domain: c.domain,
      path: c.path,
      secure: c.secure,
      httpOnly: c.httpOnly,
      sameSite: c.sameSite,
      expiresInS: c.expires > 0 ? Math.round((c.expires - now) * 10) / 10 : null,
    }));
}

function describeCallback(cb, expectedState) {
  const p = cb.params;
  return {
    received: true,
    url: cb.href,
    params: { ...p, ...(p.code ? { code: '(present)' } : {}) },
    codePresent: typeof p.code === 'string' && p.code.length > 0,
    state: p.state ?? null,
    stateMatches: p.state === expectedState,
    iss: p.iss ?? null,
    error: p.error ?? null,
    error_description: p.error_description ?? null,
  };
}

// Records every request the browser makes (navigations, redirects, subresources,
// frames) in order. Redirect hops each produce their own 'request' event with
// request.redirectedFrom() pointing at the previous hop; we also keep the
// redirect chain explicitly. Response status (incl. 3xx + Location) is filled
// in from the 'response' event.
function attachRecorders(context, page, R, S) {
  const byReq = new Map();
  const bump = () => {
    S.lastActivity = Date.now();
  };
  context.on('request', (req) => {
    let frameUrl = null;
    let mainFrame = null;
    try {
      const f = req.frame();
      frameUrl = f.url();
      mainFrame = f === page.mainFrame();
    } catch {
      /* service worker requests have no frame */
    }
    const entry = {
      seq: R.browserRequests.length,
      phase: S.phase,
      at: Date.now() - T0,
      method: req.method(),
      url: req.url(),
      resourceType: req.resourceType(),
      navigation: req.isNavigationRequest(),
      mainFrame,
      frameUrl,
      redirectedFrom: req.redirectedFrom()?.url() ?? null,
      status: null,
    };
    byReq.set(req, entry);
    R.browserRequests.push(entry);
    if (entry.navigation && mainFrame) bump();
  });
  context.on('response', (res) => {
    const entry = byReq.get(res.request());
    if (entry) {
      entry.status = res.status();
      const loc = res.headers().location;
      if (loc) entry.location = loc;
    }
    const req = res.request();
    if (req.isNavigationRequest()) {
      try {
        if (req.frame() === page.mainFrame()) {
          S.lastDocument = { url: res.url(), status: res.status() };
          bump();
        }
      } catch {
        /* ignore */
      }
    }
  });
  context.on('requestfailed', (req) => {
    const entry = byReq.get(req);
    if (entry) entry.failure = req.failure()?.errorText ?? 'failed';
    if (req.isNavigationRequest()) bump();
  });
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) {
      R.navigations.push({ phase: S.phase, at: Date.now() - T0, url: frame.url() });
      bump();
    }
  });
  page.on('load', bump);
  page.on('console', (m) => {
    if (m.type() === 'error') log('browser console error:', m.text());
  });
}

async function navigate(page, url, R, S) {
  S.lastActivity = Date.now();
  try {
    const resp = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: Math.max(1000, S.deadline - Date.now()) });
    return { status: resp?.status() ?? null };
  } catch (e) {
    // e.g. net::ERR_CONNECTION_REFUSED: the browser shows chrome-error://…;
    // keep going so the report says where it ended.
    const error = errMessage(e).split('\n')[0];
    log('navigation error:', error);
    R.navigationErrors.push({ phase: S.phase, url, error });
    return { error };
  }
}

async function isVisible(page, selector) {
  if (!selector) return false;
  try {
    return await page.locator(selector).first().isVisible();
  } catch {
    return false; // navigation in progress (execution context destroyed)
  }
}

// Poll until something meaningful happens:
//   'callback' – the redirect_uri was hit (beyond `callbacksBefore` hits)
//   'login'    – the login form's username field is visible (if wantLogin)
//   'consent'  – the configured consent button is visible (if wantConsent)
//   'settled'  – document complete and no main-frame activity for settleMs
//   'timeout'  – the overall deadline is near
async function waitProgress(page, cfg, S, { wantLogin, wantConsent, callbacksBefore }) {
  for (;;) {
    if (S.callbacks.length > callbacksBefore) return 'callback';
    if (Date.now() > S.deadline - 1500) return 'timeout';
    if (wantLogin && (await isVisible(page, cfg.login.usernameSelector))) return 'login';
    if (wantConsent && cfg.login.consentSelector && (await isVisible(page, cfg.login.consentSelector))) {
      return 'consent';
    }
    if (Date.now() - S.lastActivity >= cfg.settleMs) {
      const ready = await page.evaluate(() => document.readyState).catch(() => 'loading');
      if (ready === 'complete' && S.callbacks.length <= callbacksBefore) return 'settled';
    }
    await sleep(150);
  }
}

async function pageInfo(page, S) {
  const out = { url: null, status: null, title: null, text: null };
  if (!page) return out;
  try {
    out.url = page.url();
    // Status of the main-frame document response for the URL shown (null for
    // chrome-error:// pages or when the page was not loaded from the network).
    out.status = S.lastDocument && S.lastDocument.url === out.url ? S.lastDocument.status : null;
    out.title = await page.title().catch(() => null);
    const text = await page.locator('body').innerText({ timeout: 2000 }).catch(() => null);
    out.text = text == null ? null : text.slice(0, TEXT_SNIPPET_MAX);
  } catch {
    /* page gone */
  }
  return out;
}

async function screenshot(page, cfg, name, R) {
  if (!cfg.artifactsDir || !page) return;
  try {
    fs.mkdirSync(cfg.artifactsDir, { recursive: true });
    const file = path.join(cfg.artifactsDir, name);
    await page.screenshot({ path: file, fullPage: true, timeout: 5000 });
    R.artifacts.push(file);
  } catch (e) {
    log(`screenshot ${name} failed:`, errMessage(e).split('\n')[0]);
  }
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

async function main() {
  let cfg;
  try {
    cfg = loadConfig(process.argv[2]);
  } catch (e) {
    process.stdout.write(`${JSON.stringify({ ok: false, harnessError: true, error: e.message })}\n`);
    console.error(e.message);
    process.exit(2);
  }

  const R = {
    ok: false,
    outcome: null, // tokens | error_page | callback_error | login_failed | refresh_failed | timeout | error
    stage: null, // stage reached when the flow stopped (or 'done')
    error: null,
    config: {
      issuer: cfg.issuer,
      clientId: cfg.clientId,
      clientAuth: cfg.clientAuth,
      publicClient: cfg.clientAuth === 'none',
      redirectUri: cfg.redirectUri,
      scope: cfg.scope,
      usePAR: cfg.usePAR,
      extraParamNames: Object.keys(cfg.extraParams),
      secondVisit: cfg.secondVisit,
      secondVisitAfterMs: cfg.secondVisitAfterMs,
      reloadLoginPage: cfg.reloadLoginPage,
      otherContextVisit: cfg.otherContextVisit,
      refresh: cfg.refresh,
      verifyIdTokenSignature: cfg.verifyIdTokenSignature,
      timeoutMs: cfg.timeoutMs,
      // No keys or secrets: algorithms and kids only.
      clientKey: cfg.clientKey ? { alg: cfg.clientKey.alg, kid: cfg.clientKey.jwk.kid ?? null } : null,
      tokenClientAuth: cfg.tokenClientAuth,
      requestObjectKey: cfg.requestObjectKey ? { alg: cfg.requestObjectKey.alg, kid: cfg.requestObjectKey.jwk.kid ?? null } : null,
      requestObjectEncryption: cfg.requestObjectEncryption,
      dpop: cfg.dpop,
    },
    versions: {
      node: process.version,
      openidClient: readPkgVersion('openid-client'),
      playwrightCore: readPkgVersion('playwright-core'),
      chromium: null,
    },
    discovery: null,
    nonce: null,
    state: null,
    requestedParams: null,
    requestedParamsLength: null,
    authorizationUrl: null,
    authorizationUrlLength: null,
    authorizationUrlParams: null,
    requestUri: null,
    pushedParams: null,
    requestObject: null,
    dpop: null,
    parRequest: null,
    parResponse: null,
    httpExchanges: [],
    browserUrls: [],
    browserRequests: [],
    navigations: [],
    navigationErrors: [],
    blockedRequests: [],
    loginPageSeen: false,
    loginPageUrl: null,
    loginPageTitle: null,
    consentClicks: 0,
    callback: { received: false },
    callbackHits: 0,
    tokens: { present: false },
    nonceMatches: null,
    audMatches: null,
    issMatches: null,
    refresh: { attempted: false },
    replay: { attempted: false },
    secondVisit: { attempted: false },
    reload: { attempted: false },
    otherContext: { attempted: false },
    finalPage: null,
    artifacts: [],
    timings: {},
  };
  const S = {
    stage: 'start',
    phase: 'main',
    deadline: T0 + cfg.timeoutMs,
    lastActivity: Date.now(),
    lastDocument: null,
    callbacks: [],
  };

  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), cfg.timeoutMs);
  });
  const flow = runFlow(cfg, R, S).then(
    () => 'done',
    (e) => {
      R.error = errMessage(e);
      R.outcome = e?.outcome || 'error';
      log(`flow failed at stage ${S.stage}:`, R.error);
      return 'failed';
    },
  );
  const how = await Promise.race([flow, timeout]);
  clearTimeout(timer);
  if (how === 'timeout') {
    R.ok = false;
    R.outcome = 'timeout';
    R.error = `flow did not finish within timeoutMs=${cfg.timeoutMs} (stage ${S.stage})`;
    log(R.error);
  }
  R.stage = how === 'done' ? 'done' : S.stage;

  // Final state of the browser, screenshots on failure; all bounded.
  if (S.page) {
    if (!R.finalPage) R.finalPage = await withTimeout(pageInfo(S.page, S), 4000, 'pageInfo').catch(() => null);
    if (!R.ok) await withTimeout(screenshot(S.page, cfg, 'error.png', R), 6000, 'screenshot').catch(() => {});
    if (R.finalPage?.url) R.navigations.push({ phase: 'final', at: Date.now() - T0, url: R.finalPage.url });
  }
  R.callbackHits = S.callbacks.length;
  if (!R.callback.received && S.callbacks.length) R.callback = describeCallback(S.callbacks[0], R.state);

  // Every URL the browser requested or was redirected through, in first-seen
  // order, plus the main-frame URLs it committed to (incl. the final one).
  const urls = new Set();
  for (const r of R.browserRequests) urls.add(r.url);
  for (const n of R.navigations) if (n.url && n.url !== 'about:blank') urls.add(n.url);
  R.browserUrls = [...urls];

  if (S.browser) await withTimeout(S.browser.close(), 10000, 'browser.close').catch((e) => log('browser close:', e.message));
  if (S.server) {
    S.server.closeAllConnections?.();
    await withTimeout(new Promise((r) => S.server.close(r)), 3000, 'server.close').catch(() => {});
  }
  R.timings.totalMs = Date.now() - T0;
  log(`done: ok=${R.ok} outcome=${R.outcome} stage=${R.stage}`);
  process.stdout.write(`${JSON.stringify(R)}\n`, () => process.exit(0));
}

main().catch((e) => {
  // Plumbing crash (a bug in this script), not a flow failure.
  console.error('flow.mjs crashed:', e?.stack || e);
  process.stdout.write(`${JSON.stringify({ ok: false, harnessError: true, error: errMessage(e) })}\n`, () => process.exit(2));
});

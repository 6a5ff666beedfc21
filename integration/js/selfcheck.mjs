#!/usr/bin/env node
// selfcheck.mjs — proves flow.mjs against a real PAR-capable authorization
// server, without the caddy-par gateway.
//
// It starts node-oidc-provider (which implements RFC 9126 PAR and RFC 9207
// `iss` natively) on a free 127.0.0.1 port, mounted under /realms/demo so the
// issuer has a path like Keycloak's, then spawns `node flow.mjs <config>` for
// a set of scenarios and asserts on the JSON each prints.
//
//   node integration/js/selfcheck.mjs [--keep] [--only NAME[,NAME]]
//
// Exit 0 when every scenario passes, 1 otherwise. Bounded: each flow has its
// own timeoutMs and the whole run is killed after 5 minutes. Artifacts
// (configs, outputs, screenshots) go to a temp dir, removed unless --keep or a
// failure.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const FLOW = path.join(HERE, 'flow.mjs');
const MOUNT = '/realms/demo';
const OVERALL_MS = 5 * 60 * 1000;

const args = process.argv.slice(2);
const keep = args.includes('--keep');
const onlyIdx = args.indexOf('--only');
const only = onlyIdx >= 0 ? new Set(args[onlyIdx + 1].split(',')) : null;

const log = (...a) => console.error('[selfcheck]', ...a);

const overall = setTimeout(() => {
  console.error(`[selfcheck] FAIL: overall time limit ${OVERALL_MS}ms exceeded`);
  process.exit(1);
}, OVERALL_MS);
overall.unref();

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// --- the authorization server ------------------------------------------------

// Keys of the FAPI-shaped client (private_key_jwt ES256, request objects
// PS256) and the provider's own encryption key for request objects.
async function fapiKeys() {
  const gen = async (alg, kid, use, opts) => {
    const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, ...opts });
    const jwk = { ...(await jose.exportJWK(privateKey)), kid, alg, use };
    const { d, p, q, dp, dq, qi, ...pub } = jwk;
    return { jwk, pub };
  };
  return {
    es256: await gen('ES256', 'fapi-es256', 'sig'),
    ps256: await gen('PS256', 'fapi-ps256', 'sig'),
    enc: await gen('RSA-OAEP-256', 'op-enc', 'enc'),
    opSig: await gen('RS256', 'op-sig', 'sig'),
  };
}

async function startProvider(redirectUris, { par = true, keys = null } = {}) {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}${MOUNT}`;
  const fapiClient = keys
    ? [{
      client_id: 'fapi-app',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      request_object_signing_alg: 'PS256',
      jwks: { keys: [keys.es256.pub, keys.ps256.pub] },
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
    }]
    : [];
  const provider = new Provider(issuer, {
    ...(keys ? { jwks: { keys: [keys.opSig.jwk, keys.enc.jwk] } } : {}),
    clients: [
      ...fapiClient,
      {
        client_id: 'web-app',
        client_secret: 'web-app-secret',
        token_endpoint_auth_method: 'client_secret_basic',
        redirect_uris: redirectUris,
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
      },
      {
        client_id: 'spa',
        token_endpoint_auth_method: 'none',
        redirect_uris: redirectUris,
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
      },
      {
        // Like a gateway with require_par: plain authorization requests are
        // refused for this client.
        client_id: 'par-only',
        client_secret: 'par-only-secret',
        token_endpoint_auth_method: 'client_secret_basic',
        redirect_uris: redirectUris,
        grant_types: ['authorization_code'],
        response_types: ['code'],
        require_pushed_authorization_requests: true,
      },
    ],
    features: {
      devInteractions: { enabled: true }, // built-in login + consent pages
      pushedAuthorizationRequests: { enabled: par },
      claimsParameter: { enabled: true }, // for the large `claims` scenario
      // For the FAPI-shaped scenario: DPoP, signed (and encrypted) request
      // objects inside PAR.
      dPoP: { enabled: true },
      requestObjects: { enabled: true },
      encryption: { enabled: true },
    },
    enabledJWA: {
      requestObjectEncryptionAlgValues: ['RSA-OAEP-256', 'ECDH-ES', 'ECDH-ES+A128KW', 'ECDH-ES+A256KW'],
      requestObjectEncryptionEncValues: ['A128GCM', 'A256GCM'],
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    findAccount: (ctx, id) => ({
      accountId: id,
      claims: () => ({ sub: id, email: `${id}@example.test`, email_verified: true, name: id }),
    }),
    cookies: { keys: ['selfcheck-only-not-a-secret'] },
    // Default error page @imports web fonts; keep it self-contained.
    renderError: (ctx, out) => {
      ctx.type = 'html';
      const esc = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
      ctx.body = `<!doctype html><title>oops! something went wrong</title><h1>oops! something went wrong</h1>${Object.entries(out)
        .map(([k, v]) => `<pre><strong>${esc(k)}</strong>: ${esc(v)}</pre>`)
        .join('')}`;
    },
  });
  provider.on('server_error', (ctx, err) => log('provider server_error:', err));

  // Mount the provider under MOUNT the way connect/express would: strip the
  // prefix from req.url and keep the original in req.originalUrl (oidc-provider
  // derives its mount path from the difference).
  const cb = provider.callback();
  const server = http.createServer((req, res) => {
    if (req.url === MOUNT || req.url.startsWith(`${MOUNT}/`) || req.url.startsWith(`${MOUNT}?`)) {
      req.originalUrl = req.url;
      req.url = req.url.slice(MOUNT.length) || '/';
      cb(req, res);
    } else {
      res.writeHead(404).end('not found');
    }
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { issuer, server };
}

// --- running flow.mjs -------------------------------------------------------

function runFlow(name, cfg, workDir) {
  const dir = path.join(workDir, name);
  fs.mkdirSync(dir, { recursive: true });
  const cfgFile = path.join(dir, 'config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, artifactsDir: dir }, null, 2));
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FLOW, cfgFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    // flow.mjs bounds itself; this is only a backstop.
    const kill = setTimeout(() => child.kill('SIGKILL'), (cfg.timeoutMs || 60000) + 20000);
    child.on('close', (code) => {
      clearTimeout(kill);
      fs.writeFileSync(path.join(dir, 'stdout.json'), out);
      fs.writeFileSync(path.join(dir, 'stderr.log'), err);
      let json = null;
      try {
        json = JSON.parse(out.trim().split('\n').pop());
      } catch {
        /* reported below */
      }
      resolve({ code, json, stderr: err, dir });
    });
  });
}

// --- scenarios --------------------------------------------------------------

// oidc-provider's dev login form and consent page.
const LOGIN = {
  username: 'alice',
  password: 'any-password',
  usernameSelector: 'input[name=login]',
  passwordSelector: 'input[name=password]',
  submitSelector: 'button[type=submit]',
  // The consent page's "Continue" button is the only autofocus submit button.
  consentSelector: 'button[autofocus][type=submit]',
};

// A `claims` request parameter of at least 8 KiB: the kind of authorization
// request that does not fit comfortably in a URL and is the reason for PAR.
function bigClaims(minBytes) {
  const idToken = { email: { essential: true } };
  let i = 0;
  while (JSON.stringify({ id_token: idToken }).length < minBytes) {
    idToken[`urn:example:claim:padding:${String(i++).padStart(5, '0')}`] = { essential: false };
  }
  return JSON.stringify({ id_token: idToken });
}

function scenarios(issuer, noParIssuer, cbPort, keys) {
  const redirectUri = `http://127.0.0.1:${cbPort}/callback`;
  const base = { issuer, redirectUri, login: LOGIN, timeoutMs: 45000 };
  const claims = bigClaims(8192);
  // The FAPI 2.0 shape flow.mjs drives through the gateway: private_key_jwt,
  // a signed request object and DPoP at PAR, PKCE S256. oidc-provider uses
  // one auth method for PAR and token endpoint, so tokenClientAuth (the
  // gateway case: secret at the upstream's token endpoint) is not used here.
  const fapi = {
    ...base,
    clientId: 'fapi-app',
    clientAuth: 'private_key_jwt',
    clientKey: { jwk: keys.es256.jwk, alg: 'ES256' },
    requestObjectKey: { jwk: keys.ps256.jwk, alg: 'PS256' },
    dpop: { alg: 'ES256', tokenRequest: true },
    scope: 'openid email',
    usePAR: true,
  };
  const fapiCheck = (j, a) => {
    a(j.ok === true && j.outcome === 'tokens', `ok/outcome (${j.outcome}: ${j.error})`);
    const pushed = Object.keys(j.pushedParams || {}).sort().join(',');
    a(pushed === 'client_assertion,client_assertion_type,client_id,request', `pushed only client_id, request and the assertion (got ${pushed})`);
    const ca = j.parRequest?.clientAssertion;
    a(ca?.header?.alg === 'ES256' && ca.header.kid === 'fapi-es256' && ca.claims.aud === issuer && ca.claims.iss === 'fapi-app' && ca.claims.sub === 'fapi-app' && ca.claims.jti, `client assertion ES256, aud = issuer string (${JSON.stringify(ca?.claims)})`);
    const ro = j.requestObject?.signed;
    a(ro?.header?.alg === 'PS256' && ro.header.typ === 'oauth-authz-req+jwt' && ro.claims.iss === 'fapi-app' && ro.claims.aud === issuer && ro.claims.client_id === 'fapi-app', `request object PS256 typ oauth-authz-req+jwt (${JSON.stringify(ro?.header)})`);
    a(ro?.claims?.code_challenge_method === 'S256' && ro.claims.nonce === j.nonce && ro.claims.state === j.state && ro.claims.redirect_uri === redirectUri && ro.claims.exp - ro.claims.nbf <= 3600, 'request object carries PKCE S256, nonce, state, redirect_uri; exp - nbf <= 60 min');
    const dp = j.parRequest?.dpop;
    a(dp?.header?.typ === 'dpop+jwt' && dp.claims.htm === 'POST' && dp.claims.htu === j.discovery.pushed_authorization_request_endpoint, `DPoP proof on the push (${JSON.stringify(dp?.claims)})`);
    const tok = j.httpExchanges.find((x) => x.grantType === 'authorization_code');
    a(tok?.dpop?.claims?.htu === j.discovery.token_endpoint && tok.authScheme === null, 'DPoP proof and private_key_jwt on the token request');
    a(j.tokens?.tokenType?.toLowerCase() === 'dpop', `DPoP-bound access token (token_type ${j.tokens?.tokenType})`);
    a(j.nonceMatches && j.audMatches && j.issMatches, 'nonce/aud/iss match');
  };
  return [
    {
      name: 'fapi-pkjwt-jar-dpop-par',
      cfg: fapi,
      check: fapiCheck,
    },
    {
      name: 'fapi-pkjwt-encrypted-jar-dpop-par',
      cfg: { ...fapi, requestObjectEncryption: { jwksUri: `${issuer}/jwks`, alg: 'RSA-OAEP-256', enc: 'A256GCM' } },
      check: (j, a) => {
        fapiCheck(j, a);
        const e = j.requestObject?.encrypted;
        a(e?.parts === 5 && e.header.alg === 'RSA-OAEP-256' && e.header.enc === 'A256GCM' && e.header.cty === 'JWT' && e.keyKid === 'op-enc', `request object encrypted to the provider's key (${JSON.stringify(e)})`);
        a(!String(j.pushedParams?.request).startsWith(j.requestObject?.signed ? 'ey' : '-') || j.pushedParams.request.split('.').length === 5, 'the pushed request is the JWE');
      },
    },
    {
      name: 'confidential-par-refresh-secondvisit',
      cfg: {
        ...base,
        clientId: 'web-app',
        clientSecret: 'web-app-secret',
        scope: 'openid profile email offline_access',
        usePAR: true,
        // oidc-provider drops offline_access unless prompt includes consent.
        extraParams: { prompt: 'consent' },
        refresh: true,
        secondVisit: true,
      },
      check: (j, a) => {
        a(j.ok === true && j.outcome === 'tokens', `ok/outcome (${j.outcome}: ${j.error})`);
        a(j.discovery?.pushed_authorization_request_endpoint, 'discovery advertises PAR endpoint');
        a(j.parRequest?.authScheme === 'Basic', 'PAR request authenticated with client_secret_basic');
        a(j.parResponse?.status === 201 && j.parResponse.body?.request_uri, 'PAR 201 with request_uri');
        a(j.pushedParams?.code_challenge_method === 'S256' && j.pushedParams?.nonce === j.nonce && j.pushedParams?.state === j.state, 'pushed params carry PKCE/nonce/state');
        a(j.pushedParams?.redirect_uri === base.redirectUri && j.pushedParams?.scope?.includes('offline_access'), 'pushed redirect_uri/scope');
        const q = Object.keys(j.authorizationUrlParams || {}).sort().join(',');
        a(q === 'client_id,request_uri', `authorization URL carries only client_id,request_uri (got ${q})`);
        a(j.browserUrls.some((u) => u.includes('request_uri=')), 'browser visited request_uri URL');
        a(j.browserUrls.some((u) => u.startsWith(base.redirectUri)), 'browser reached callback');
        a(!j.browserUrls.some((u) => u.includes('code_challenge=')), 'no PKCE challenge in any browser URL');
        a(j.browserRequests.some((r) => r.redirectedFrom), 'redirect hops recorded');
        a(j.loginPageSeen === true && j.loginPageUrl?.includes('/interaction/'), 'login page seen');
        a(j.consentClicks >= 1, 'consent clicked');
        a(j.callback?.codePresent && j.callback.stateMatches && j.callback.iss === issuer, 'callback code/state/iss');
        a(j.tokens?.idTokenPresent && j.tokens.accessTokenPresent && j.tokens.refreshTokenPresent, 'tokens present');
        a(j.nonceMatches === true && j.audMatches === true && j.issMatches === true, 'nonce/aud/iss match');
        a(j.tokens?.idTokenClaims?.sub === 'alice', 'sub');
        a(j.tokens?.idTokenSignatureVerified === true && j.httpExchanges.some((x) => x.url === j.discovery.jwks_uri && x.status === 200), 'id_token signature verified via jwks_uri');
        a(j.refresh?.ok === true && j.refresh.accessTokenPresent && j.refresh.newAccessTokenDiffers, 'refresh ok');
        // oidc-provider knows the client's only redirect_uri, so it redirects
        // the replayed request_uri back with error=invalid_request_uri (the
        // gateway instead renders an error page: status 400 there).
        a(j.secondVisit?.attempted && j.secondVisit.codeIssued === false && j.secondVisit.loginPageSeen === false, 'second visit issued no code');
        a(j.secondVisit?.callback?.error === 'invalid_request_uri', `second visit -> invalid_request_uri (got ${j.secondVisit?.callback?.error})`);
        a(/invalid_request_uri/.test(j.secondVisit?.text || ''), `second visit page shows invalid_request_uri (got ${JSON.stringify((j.secondVisit?.text || '').slice(0, 200))})`);
        a(j.callbackHits === 2, 'callback hit once per visit');
        a(j.blockedRequests.length >= 1, 'web-font @import was blocked (browser stayed on loopback)');
        for (const f of ['login.png', 'callback.png', 'second-visit.png']) a(j.artifacts.some((p) => p.endsWith(f)), `${f} saved`);
      },
    },
    {
      name: 'public-par',
      cfg: {
        ...base,
        clientId: 'spa',
        scope: 'openid profile email',
        usePAR: true,
      },
      check: (j, a) => {
        a(j.ok === true && j.outcome === 'tokens', `ok/outcome (${j.outcome}: ${j.error})`);
        a(j.parRequest?.authScheme === null && j.pushedParams?.client_id === 'spa', 'public client: no Authorization header, client_id in body');
        a(j.config.publicClient === true, 'config.publicClient');
        a(j.tokens?.idTokenClaims?.aud === 'spa' && j.audMatches && j.nonceMatches, 'id_token aud/nonce');
        a(j.refresh.attempted === false && j.secondVisit.attempted === false, 'no refresh/second visit requested');
      },
    },
    {
      name: 'large-claims-par',
      cfg: {
        ...base,
        clientId: 'web-app',
        clientSecret: 'web-app-secret',
        scope: 'openid email',
        usePAR: true,
        extraParams: { claims },
      },
      check: (j, a) => {
        a(j.ok === true && j.outcome === 'tokens', `ok/outcome (${j.outcome}: ${j.error})`);
        a(j.pushedParams?.claims === claims && claims.length >= 8192, `pushed ${claims.length}-byte claims intact`);
        a(j.parRequest?.bodyLength > 8192, `PAR body ${j.parRequest?.bodyLength} bytes`);
        a(j.authorizationUrlLength < 400, `authorization URL stays short (${j.authorizationUrlLength})`);
        a(j.tokens?.idTokenClaims?.email === 'alice@example.test', 'essential email claim delivered in id_token');
      },
    },
    {
      name: 'plain-non-par',
      cfg: {
        ...base,
        clientId: 'web-app',
        clientSecret: 'web-app-secret',
        scope: 'openid',
        usePAR: false,
      },
      check: (j, a) => {
        a(j.ok === true && j.outcome === 'tokens', `ok/outcome (${j.outcome}: ${j.error})`);
        a(j.pushedParams === null && j.parResponse === null, 'nothing pushed');
        a(j.authorizationUrlParams?.code_challenge && j.authorizationUrlParams?.nonce === j.nonce, 'params in URL');
      },
    },
    {
      name: 'non-par-refused-callback-error',
      cfg: {
        ...base,
        clientId: 'par-only',
        clientSecret: 'par-only-secret',
        scope: 'openid',
        usePAR: false,
      },
      check: (j, a) => {
        a(j.ok === false && j.outcome === 'callback_error', `outcome callback_error (${j.outcome}: ${j.error})`);
        a(j.loginPageSeen === false, 'login page NOT seen');
        a(j.callback?.received && j.callback.error === 'invalid_request', `callback error=invalid_request (${j.callback?.error}: ${j.callback?.error_description})`);
        a(j.tokens.present === false, 'no tokens');
        a(j.artifacts.some((p) => p.endsWith('error.png')), 'error.png saved');
      },
    },
    {
      name: 'non-par-error-page',
      cfg: {
        ...base,
        clientId: 'no-such-client',
        scope: 'openid',
        usePAR: false,
      },
      check: (j, a) => {
        a(j.ok === false && j.outcome === 'error_page', `outcome error_page (${j.outcome}: ${j.error})`);
        a(j.loginPageSeen === false && j.callback.received === false, 'no login page, no callback');
        a(j.finalPage?.status === 400 && /invalid_client/.test(j.finalPage?.text || ''), `final page 400 invalid_client (${j.finalPage?.status})`);
      },
    },
    {
      // A discovery document WITHOUT pushed_authorization_request_endpoint:
      // openid-client must refuse to do PAR (this is why a successful PAR flow
      // through the gateway proves its discovery rewrite).
      name: 'par-not-advertised',
      cfg: {
        ...base,
        issuer: noParIssuer,
        clientId: 'web-app',
        clientSecret: 'web-app-secret',
        scope: 'openid',
        usePAR: true,
      },
      check: (j, a) => {
        a(j.ok === false && j.outcome === 'error' && j.stage === 'par', `outcome error at stage par (${j.outcome}/${j.stage}: ${j.error})`);
        a(j.discovery?.pushed_authorization_request_endpoint === null, 'discovery has no PAR endpoint');
        a(/pushed_authorization_request_endpoint/.test(j.error || ''), 'error names pushed_authorization_request_endpoint');
        a(j.browserUrls.length === 0 && j.parResponse === null, 'no browser, no PAR request');
      },
    },
  ];
}

// --- main --------------------------------------------------------------------

async function main() {
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'caddy-par-js-selfcheck-'));
  const cbPort = await freePort();
  const keys = await fapiKeys();
  const { issuer, server } = await startProvider([`http://127.0.0.1:${cbPort}/callback`], { keys });
  const noPar = await startProvider([`http://127.0.0.1:${cbPort}/callback`], { par: false });
  log('oidc-provider at', issuer, '(and without PAR at', noPar.issuer, '); callback port', cbPort, '; work dir', workDir);

  const results = [];
  for (const sc of scenarios(issuer, noPar.issuer, cbPort, keys)) {
    if (only && !only.has(sc.name)) continue;
    const t = Date.now();
    const r = await runFlow(sc.name, sc.cfg, workDir);
    const failures = [];
    if (r.code !== 0) failures.push(`flow.mjs exit code ${r.code}`);
    if (!r.json) failures.push('no JSON on stdout');
    else {
      try {
        sc.check(r.json, (cond, what) => {
          if (!cond) failures.push(what);
        });
      } catch (e) {
        failures.push(`check threw: ${e.message}`);
      }
    }
    const ms = Date.now() - t;
    results.push({ name: sc.name, pass: failures.length === 0, failures, ms });
    log(`${failures.length ? 'FAIL' : 'PASS'} ${sc.name} (${ms} ms)${failures.map((f) => `\n    - ${f}`).join('')}`);
    if (failures.length) log(`    artifacts: ${r.dir}`);
  }

  for (const s of [server, noPar.server]) {
    s.closeAllConnections?.();
    s.close();
  }
  const passed = results.filter((r) => r.pass).length;
  const failed = results.length - passed;
  console.log(JSON.stringify({ issuer, workDir, results }, null, 2));
  // Plain closing line understood by the CI summariser.
  console.log(`selfcheck: ${passed} passed, ${failed} failed`);
  if (!failed && !keep) fs.rmSync(workDir, { recursive: true, force: true });
  process.exit(failed || results.length === 0 ? 1 : 0);
}

main().catch((e) => {
  console.error('[selfcheck] crashed:', e?.stack || e);
  process.exit(1);
});

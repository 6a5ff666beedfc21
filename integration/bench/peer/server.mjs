// node-oidc-provider peer for the caddy-par load bench.
//
// Loopback only, in-memory, dev keys: a benchmark fixture, NOT a production
// configuration. Started by `go run ./bench` as
//   node server.mjs <port>
// and prints "READY <issuer>" on stdout once it listens on 127.0.0.1:<port>.
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 0);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.mjs <port>');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'web-app',
      client_secret: 's3cret',
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: ['https://app.example.com/callback'],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      scope: 'openid profile email',
      authorization_details_types: ['payment_initiation'],
    },
  ],
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'profile', 'email'],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    pushedAuthorizationRequests: {
      enabled: true,
      requirePushedAuthorizationRequests: false,
    },
    // RAR requires a resource; default one only for requests that carry
    // authorization_details, so the plain push path is unchanged.
    resourceIndicators: {
      enabled: true,
      defaultResource(ctx) {
        return ctx.oidc.params.authorization_details ? 'https://rs.example.com' : undefined;
      },
      getResourceServerInfo() {
        return { scope: '', audience: 'https://rs.example.com', accessTokenFormat: 'opaque' };
      },
    },
    // The gateway stores authorization_details opaquely; accept the same
    // RFC 9396 type here so par-push-large has a peer to compare with.
    richAuthorizationRequests: {
      enabled: true,
      types: {
        payment_initiation: { validate() {} },
      },
    },
  },
  ttl: { PushedAuthorizationRequest: 60 },
});

// The bench talks plain HTTP on loopback; tell the provider not to insist on
// TLS-derived request properties (it is a bench, not production).
provider.proxy = false;

// Silence per-request error logging: errors are counted by the load generator.
provider.on('server_error', (ctx, err) => { console.error('server_error', err && err.message); });

const server = http.createServer(provider.callback());
server.keepAliveTimeout = 75_000;
server.headersTimeout = 80_000;
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});

function shutdown() { server.close(); process.exit(0); }
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// Die with the parent: the bench closes our stdin when it exits.
process.stdin.on('end', shutdown);
process.stdin.on('close', shutdown);
process.stdin.resume();

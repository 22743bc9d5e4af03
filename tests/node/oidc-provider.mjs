// A real OpenID provider for the tests: panva's `oidc-provider` (a certified implementation)
// on a free loopback port, with one confidential test client (authorization code, PKCE
// required, RP-initiated logout), two static accounts found by `findAccount` (with a
// `groups` claim), and the package's development login and consent pages (any password is
// accepted; the login name picks the account).
//
// Used two ways:
//   - imported by tests/node/oidc.test.mjs: `await startOidcProvider({ redirectUris, ... })`;
//   - run as a program by the Rust API tests (tests/api/oidc.rs):
//       OIDC_TEST_REDIRECT_URIS=... node tests/node/oidc-provider.mjs
//     prints `issuer <url>` once listening and runs until SIGTERM or stdin closes.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import Provider from 'oidc-provider';

export const CLIENT_ID = 'chat-test';
export const CLIENT_SECRET = 'a-test-client-secret-that-is-long-enough';

/** The static accounts: the login name typed in the provider's form is the key. */
export const ACCOUNTS = {
  ada: { email: 'ada@example.org', email_verified: true, name: 'Ada Lovelace', groups: ['chat-admins', 'staff'] },
  bob: { email: 'bob@example.org', email_verified: true, name: 'Bob Builder', groups: ['staff'] },
};

/** A signing key of its own for each start (a restart is a key rotation). */
function freshSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };
}

/**
 * Starts the provider (on `port`, else a free one). Returns {issuer, port, hits, close()}:
 * `hits` lists the requests it received (so a test can see its end_session endpoint was
 * reached).
 */
export async function startOidcProvider({ redirectUris, postLogoutRedirectUris = [], port = 0 } = {}) {
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      client_name: 'LLM Chat (tests)',
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutRedirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    async findAccount(ctx, sub) {
      const account = ACCOUNTS[sub];
      if (!account) return undefined;
      return { accountId: sub, async claims() { return { sub, ...account }; } };
    },
    jwks: { keys: [freshSigningKey()] },
    cookies: { keys: ['oidc-test-cookie-key-0123456789abcdef'] },
    ttl: { Interaction: 600, Session: 3600, Grant: 3600, AccessToken: 600, IdToken: 600 },
  });
  const hits = [];
  provider.use(async (ctx, next) => {
    hits.push(`${ctx.method} ${ctx.path}`);
    await next();
  });
  server.on('request', provider.callback());
  return {
    issuer,
    port: server.address().port,
    hits,
    close: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const list = (name) => (process.env[name] || '').split(',').map((s) => s.trim()).filter(Boolean);
  const running = await startOidcProvider({
    redirectUris: list('OIDC_TEST_REDIRECT_URIS'),
    postLogoutRedirectUris: list('OIDC_TEST_POST_LOGOUT_REDIRECT_URIS'),
  });
  const stop = async () => { await running.close(); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.resume();
  process.stdout.write(`issuer ${running.issuer}\n`);
}

// Command dex runs the real Dex OpenID Connect server (github.com/dexidp/dex,
// embedded as a library) with in-memory storage, static clients and one static
// password user. It is the "legacy IdP without PAR" that caddy-par's
// end-to-end tests put the oauth_par gateway in front of.
//
// Dex's own cmd/dex cannot be built from the module proxy (its go.mod has a
// replace directive), so this program wires up the server package itself,
// doing the same setup cmd/dex/serve.go does for a config with
// enablePasswordDB, staticClients and staticPasswords. See NOTES.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	gosundheit "github.com/AppsFlyer/go-sundheit"
	"github.com/dexidp/dex/server"
	"github.com/dexidp/dex/storage"
	"github.com/dexidp/dex/storage/memory"
	"golang.org/x/crypto/bcrypt"
)

// clientFlags collects repeated -client values.
type clientFlags []storage.Client

func (c *clientFlags) String() string { return fmt.Sprint(len(*c), " clients") }

// Set parses "id=ID;secret=S;name=N;redirect=URI[;redirect=URI...][;public=true]".
// ';' separates fields because redirect URIs contain ':' and ','.
// An empty or missing secret makes the client public.
func (c *clientFlags) Set(v string) error {
	var cl storage.Client
	for _, field := range strings.Split(v, ";") {
		if field == "" {
			continue
		}
		k, val, ok := strings.Cut(field, "=")
		if !ok {
			return fmt.Errorf("client field %q is not key=value", field)
		}
		switch k {
		case "id":
			cl.ID = val
		case "secret":
			cl.Secret = val
		case "name":
			cl.Name = val
		case "redirect":
			if _, err := url.Parse(val); err != nil {
				return fmt.Errorf("client redirect %q: %v", val, err)
			}
			cl.RedirectURIs = append(cl.RedirectURIs, val)
		case "public":
			cl.Public = val == "true"
		default:
			return fmt.Errorf("unknown client field %q", k)
		}
	}
	if cl.ID == "" {
		return errors.New("client needs id=")
	}
	if cl.Secret == "" {
		cl.Public = true
	}
	if cl.Name == "" {
		cl.Name = cl.ID
	}
	*c = append(*c, cl)
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dex:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		clients      clientFlags
		addr         = flag.String("addr", "127.0.0.1:5556", "listen address (loopback only)")
		issuer       = flag.String("issuer", "", "issuer URL, e.g. http://127.0.0.1:8443/dex; Dex serves under its path")
		userEmail    = flag.String("user-email", "alice@example.com", "static password user: email (the login name)")
		userName     = flag.String("user-name", "alice", "static password user: username")
		userID       = flag.String("user-id", "08a8684b-db88-4b73-90a9-3cd1661f5466", "static password user: user id (ID token sub is derived from it)")
		userPassword = flag.String("user-password", "", "static password user: password (required)")
		skipApproval = flag.Bool("skip-approval", true, "skip Dex's approval screen (approval_prompt=force still shows it; prompt=consent does not)")
		idTokenTTL   = flag.Duration("id-token-ttl", 24*time.Hour, "ID and access token lifetime")
		logLevel     = flag.String("log-level", "info", "debug, info, warn or error")
		maxURI       = flag.Int("max-uri-bytes", 0, "if > 0, answer 414 to requests whose request-target is longer, to mimic IdPs with URL limits (Dex itself has none)")
	)
	flag.Var(&clients, "client", `static client, repeatable: "id=ID;secret=SECRET;name=NAME;redirect=URI[;redirect=URI...]" (no secret = public client)`)
	flag.Parse()

	if *issuer == "" {
		return errors.New("-issuer is required")
	}
	if *userPassword == "" {
		return errors.New("-user-password is required")
	}
	if len(clients) == 0 {
		return errors.New("at least one -client is required")
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("-addr: %v", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-addr %q: only loopback addresses are allowed", *addr)
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// Dex refuses bcrypt hashes below cost 10; MinCost would be rejected.
	hash, err := bcrypt.GenerateFromPassword([]byte(*userPassword), 10)
	if err != nil {
		return err
	}

	// Same layering as cmd/dex: memory storage wrapped by static (read-only)
	// clients, passwords and connectors.
	var store storage.Storage = memory.New(logger)
	store = storage.WithStaticClients(store, clients)
	store = storage.WithStaticPasswords(store, []storage.Password{{
		Email:    *userEmail,
		Hash:     hash,
		Username: *userName,
		UserID:   *userID,
	}}, logger)
	// The built-in password DB connector ("enablePasswordDB: true"). Being the
	// only connector, /auth redirects straight to /auth/local.
	store = storage.WithStaticConnectors(store, []storage.Connector{{
		ID:   server.LocalConnector,
		Type: server.LocalConnector,
		Name: "Email",
	}})

	// A nil policy would be dereferenced by the refresh grant; the zero
	// settings mean: rotate refresh tokens, no expiry.
	refreshPolicy, err := server.NewRefreshTokenPolicy(logger, false, "", "", "")
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	health := gosundheit.New() // /healthz dereferences it
	defer health.DeregisterAll()

	srv, err := server.NewServer(ctx, server.Config{
		Issuer:             *issuer,
		Storage:            store,
		SkipApprovalScreen: *skipApproval,
		IDTokensValidFor:   *idTokenTTL,
		RefreshTokenPolicy: refreshPolicy,
		Logger:             logger,
		Now:                func() time.Time { return time.Now().UTC() },
		HealthChecker:      health,
		// Defaults: response_type code only; grants authorization_code,
		// refresh_token, device_code, token-exchange.
	})
	if err != nil {
		return fmt.Errorf("new server: %w", err)
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	var h http.Handler = srv
	if *maxURI > 0 {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if len(r.RequestURI) > *maxURI {
				http.Error(w, "request URI too long", http.StatusRequestURITooLong)
				return
			}
			srv.ServeHTTP(w, r)
		})
	}
	// Go's default 1 MiB MaxHeaderBytes still applies (431 above it).
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	fmt.Printf("dex listening on %s issuer %s\n", ln.Addr(), *issuer)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return hs.Shutdown(shutCtx)
}

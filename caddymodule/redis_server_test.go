package caddymodule

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRedis is a redis-server started by a test on a free 127.0.0.1 port,
// with a throwaway directory and no persistence (--save "" --appendonly
// no): a Restart therefore starts empty. It is stopped at the end of the
// test. Exported for the in-process Caddy tests (package caddymodule_test).
type TestRedis struct {
	t    testing.TB
	Addr string
	Port int
	dir  string
	cmd  *exec.Cmd
	args []string
	// cliArgs are redis-cli's connection options (TLS).
	cliArgs []string
	// CAFile is the CA of a TLS server (StartTestRedisTLS).
	CAFile string
}

// StartTestRedis starts redis-server. Without redis-server the test is
// skipped, unless CADDY_PAR_REQUIRE_REDIS is set (integration/test.sh sets
// it), so CI never silently skips the Redis tests. Extra args are passed on
// (e.g. "--maxmemory-policy", "allkeys-lru").
func StartTestRedis(t testing.TB, extra ...string) *TestRedis {
	t.Helper()
	r := newTestRedis(t)
	r.args = append(r.args, "--port", strconv.Itoa(r.Port))
	r.args = append(r.args, extra...)
	r.start()
	t.Cleanup(r.Stop)
	return r
}

// StartTestRedisTLS is StartTestRedis with TLS only (no plaintext port), a
// server certificate for 127.0.0.1 and "localhost" from a fresh CA in
// CAFile, and no client certificates.
func StartTestRedisTLS(t testing.TB) *TestRedis {
	t.Helper()
	r := newTestRedis(t)
	cert, key, ca := writeTestCerts(t, r.dir)
	r.CAFile = ca
	r.args = append(r.args, "--port", "0", "--tls-port", strconv.Itoa(r.Port), "--tls-cert-file", cert,
		"--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no")
	r.cliArgs = []string{"--tls", "--cacert", ca}
	r.start()
	t.Cleanup(r.Stop)
	return r
}

func newTestRedis(t testing.TB) *TestRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CADDY_PAR_REQUIRE_REDIS") != "" {
			t.Fatal("redis-server is not installed but CADDY_PAR_REQUIRE_REDIS is set: run integration/scripts/ensure-redis.sh (apt-get install redis-server)")
		}
		t.Skip("redis-server is not installed: skipping the Redis store tests (integration/scripts/ensure-redis.sh installs it; set CADDY_PAR_REQUIRE_REDIS=1 to make this a failure)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &TestRedis{t: t, Port: port, Addr: "127.0.0.1:" + strconv.Itoa(port), dir: t.TempDir()}
	r.args = []string{bin, "--bind", "127.0.0.1", "--dir", r.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
		"--logfile", filepath.Join(r.dir, "redis.log")}
	return r
}

func (r *TestRedis) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.args[0], r.args[1:]...)
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("starting redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := r.CLI("PING"); err == nil && strings.TrimSpace(out) == "PONG" {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.t.Fatalf("redis-server on %s not ready after 10s; log:\n%s", r.Addr, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills redis-server (SIGKILL: an abrupt outage) and waits for it.
func (r *TestRedis) Stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGCONT)
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// Restart starts redis-server again on the same port, empty.
func (r *TestRedis) Restart() { r.t.Helper(); r.Stop(); r.start() }

// Pause freezes redis-server (SIGSTOP): connections are accepted by the
// kernel but nothing answers, which is what a slow or hung Redis looks like.
func (r *TestRedis) Pause() { _ = r.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume undoes Pause.
func (r *TestRedis) Resume() { _ = r.cmd.Process.Signal(syscall.SIGCONT) }

// CLI runs redis-cli against the server and returns its output.
func (r *TestRedis) CLI(args ...string) (string, error) {
	base := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(r.Port)}, r.cliArgs...)
	cmd := exec.Command("redis-cli", append(base, args...)...)
	out, err := cmd.Output()
	return string(out), err
}

// MustCLI is CLI failing the test on error.
func (r *TestRedis) MustCLI(args ...string) string {
	r.t.Helper()
	out, err := r.CLI(args...)
	if err != nil {
		r.t.Fatalf("redis-cli %v: %v", args, err)
	}
	return out
}

// CommandCalls is INFO commandstats as command -> calls.
func (r *TestRedis) CommandCalls() map[string]int {
	r.t.Helper()
	out := r.MustCLI("INFO", "commandstats")
	calls := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.Atoi(v)
				calls[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return calls
}

// CallsSince is the per-command difference of two CommandCalls (commands
// issued by redis-cli itself, INFO, excluded).
func CallsSince(before, after map[string]int) map[string]int {
	d := map[string]int{}
	for k, v := range after {
		if k == "info" {
			continue
		}
		if n := v - before[k]; n != 0 {
			d[k] = n
		}
	}
	return d
}

func (r *TestRedis) String() string { return fmt.Sprintf("redis-server %s", r.Addr) }

// writeTestCerts writes a CA and a server certificate for 127.0.0.1 and
// localhost into dir, and returns the server cert, key and CA paths.
func writeTestCerts(t testing.TB, dir string) (cert, key, ca string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "caddy-par test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(srvKey)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("server.crt", "CERTIFICATE", srvDER), write("server.key", "PRIVATE KEY", kb), write("ca.crt", "CERTIFICATE", caDER)
}

// StartTestSentinel starts a Redis Sentinel on a free port monitoring the
// primary master (quorum 1, down after 1s), and waits until it knows it.
func StartTestSentinel(t testing.TB, name string, master *TestRedis) *TestRedis {
	t.Helper()
	r := newTestRedis(t)
	conf := filepath.Join(r.dir, "sentinel.conf")
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 3000\n",
		r.Port, r.dir, filepath.Join(r.dir, "redis.log"), name, master.Port, name, name)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	r.args = []string{r.args[0], conf, "--sentinel"}
	r.start()
	t.Cleanup(r.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := r.CLI("SENTINEL", "get-master-addr-by-name", name)
		if err == nil && strings.Contains(out, strconv.Itoa(master.Port)) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("sentinel does not know %s: %q %v", name, out, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/cairnmesh/cairn/apis/ca/v1"
	"github.com/cairnmesh/cairn/internal/pki"
	"github.com/cairnmesh/cairn/internal/spiffe"
)

func TestFirstCertificateUnblocksWaiters(t *testing.T) {
	h := newHarness(t, nil)
	id := identity("web")
	gate := make(chan struct{})
	h.ca.setGate(gate)

	if _, err := h.m.Source(id).GetX509SVID(); !errors.Is(err, ErrNotWanted) {
		t.Fatalf("GetX509SVID before Want: %v, want ErrNotWanted", err)
	}
	// One connection arrives before its pod is even known, one after.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	type result struct {
		serial string
		err    error
	}
	results := make(chan result, 2)
	awaitOne := func() {
		svid, err := h.m.Source(id).Await(ctx)
		if err != nil {
			results <- result{err: err}
			return
		}
		results <- result{serial: serial(svid)}
	}
	go awaitOne()
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	go awaitOne()

	if _, err := h.m.Source(id).GetX509SVID(); !errors.Is(err, ErrNotIssued) {
		t.Fatalf("GetX509SVID before issuance: %v, want ErrNotIssued", err)
	}
	if d := h.dump(id); d.State != StatePending || d.Pods != 1 {
		t.Errorf("dump before issuance: %+v, want pending with 1 pod", d)
	}
	close(gate)

	ev := h.obs.expect(t, "issued", id)
	svid := h.await(id)
	for range 2 {
		r := <-results
		if r.err != nil || r.serial != serial(svid) {
			t.Errorf("waiter got %q, %v; want %q", r.serial, r.err, serial(svid))
		}
	}

	leaf := leafOf(svid)
	if got := svid.ID.String(); got != id.String() {
		t.Errorf("SVID ID = %s, want %s", got, id)
	}
	if k, ok := svid.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("key %T is not ECDSA P-256", svid.PrivateKey)
	}
	if len(svid.Certificates) != 1 {
		t.Errorf("SVID holds %d certificates, want the leaf only (no root)", len(svid.Certificates))
	}
	if !ev.notAfter.Equal(leaf.NotAfter) {
		t.Errorf("Issued notAfter = %v, want %v", ev.notAfter, leaf.NotAfter)
	}
	if got := leaf.NotAfter.Sub(h.clock.Now()); got != time.Hour {
		t.Errorf("lifetime %v, want the requested hour", got)
	}
	if toks := h.ca.seenTokens(); len(toks) != 1 || toks[0] != "token-1" {
		t.Errorf("CA saw tokens %q, want [token-1]", toks)
	}
	d := h.dump(id)
	if d.State != StateValid || d.Serial != serial(svid) || !d.NotAfter.Equal(leaf.NotAfter) || d.LastError != "" {
		t.Errorf("dump after issuance: %+v", d)
	}
}

func TestAwaitIsBoundedByContext(t *testing.T) {
	h := newHarness(t, nil)
	id := identity("slow")
	gate := make(chan struct{})
	h.ca.setGate(gate)
	t.Cleanup(func() { close(gate) })
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := h.m.Source(id).Await(ctx)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrNotIssued) {
		t.Fatalf("Await with an ended context: %v, want context.Canceled and ErrNotIssued", err)
	}
}

func TestRefusesInvalidAnswers(t *testing.T) {
	foreign := newRoot(t)
	tests := []struct {
		name   string
		answer func(h *harness, r signRequest) (*cav1.CreateCertificateResponse, error)
		want   string
	}{{
		name: "another identity",
		answer: func(h *harness, r signRequest) (*cav1.CreateCertificateResponse, error) {
			r.id = identity("admin")
			return h.ca.sign(h.root, r)
		},
		want: "for spiffe://cluster.local/ns/shop/sa/admin, requested spiffe://cluster.local/ns/shop/sa/web",
	}, {
		name: "foreign root",
		answer: func(h *harness, r signRequest) (*cav1.CreateCertificateResponse, error) {
			return h.ca.sign(foreign, r)
		},
		want: "does not verify against the trust bundle",
	}, {
		name: "another key",
		answer: func(h *harness, r signRequest) (*cav1.CreateCertificateResponse, error) {
			k, err := pki.GenerateKey()
			if err != nil {
				return nil, err
			}
			r.pub = k.Public()
			return h.ca.sign(h.root, r)
		},
		want: "public key is not the one of the CSR",
	}, {
		name: "empty chain",
		answer: func(*harness, signRequest) (*cav1.CreateCertificateResponse, error) {
			return &cav1.CreateCertificateResponse{}, nil
		},
		want: "empty certificate chain",
	}, {
		name: "not PEM",
		answer: func(*harness, signRequest) (*cav1.CreateCertificateResponse, error) {
			return &cav1.CreateCertificateResponse{CertChain: []string{"garbage"}}, nil
		},
		want: "unreadable chain",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			id := identity("web")
			h.ca.setAnswer(func(r signRequest) (*cav1.CreateCertificateResponse, error) { return tc.answer(h, r) })
			if err := h.m.Want(id); err != nil {
				t.Fatal(err)
			}
			ev := h.obs.expect(t, "failed", id)
			if ev.reason != ReasonInvalid || !strings.Contains(ev.err.Error(), tc.want) {
				t.Fatalf("failure %s: %v; want %s containing %q", ev.reason, ev.err, ReasonInvalid, tc.want)
			}
			if _, err := h.m.Source(id).GetX509SVID(); !errors.Is(err, ErrNotIssued) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("GetX509SVID after a refused answer: %v, want ErrNotIssued with the reason", err)
			}
			if d := h.dump(id); d.State != StateFailed || d.Failures != 1 || !strings.Contains(d.LastError, tc.want) {
				t.Errorf("dump after a refused answer: %+v", d)
			}

			// The CA comes to its senses; the retry after the back-off
			// gets a good certificate.
			h.ca.setAnswer(nil)
			h.clock.Advance(ev.retryIn)
			h.obs.expect(t, "issued", id)
			if got := h.await(id).ID.String(); got != id.String() {
				t.Errorf("certificate for %s, want %s", got, id)
			}
			if d := h.dump(id); d.State != StateValid || d.Failures != 0 || d.LastError != "" {
				t.Errorf("dump after the retry: %+v", d)
			}
		})
	}
}

func TestRenewsAtHalfLife(t *testing.T) {
	h := newHarness(t, nil)
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)
	first := h.await(id)
	issuedAt := h.clock.Now()
	if got, want := h.dump(id).RenewAt, issuedAt.Add(30*time.Minute); !got.Equal(want) {
		t.Fatalf("renewAt = %v, want half of the hour: %v", got, want)
	}

	// A connection established with the first certificate.
	conn := newTLSPair(t, h.m.Source(id), h.bundle, h.root)
	if got := conn.serverSerial(t); got != serial(first) {
		t.Fatalf("first connection presented %s, want %s", got, serial(first))
	}

	h.clock.Advance(30 * time.Minute)
	h.obs.expect(t, "issued", id)
	second := h.await(id)
	if serial(second) == serial(first) {
		t.Fatal("renewal kept the serial")
	}
	if second.PrivateKey == first.PrivateKey {
		t.Error("renewal reused the key")
	}
	if got := serial(first); got != leafOf(first).SerialNumber.Text(16) {
		t.Error("the SVID handed out before rotation changed")
	}
	if got, want := h.dump(id).RenewAt, h.clock.Now().Add(30*time.Minute); !got.Equal(want) {
		t.Errorf("next renewAt = %v, want %v", got, want)
	}

	// The established connection still works; a new one gets the new
	// certificate.
	conn.roundTrip(t)
	if got := newTLSPair(t, h.m.Source(id), h.bundle, h.root).serverSerial(t); got != serial(second) {
		t.Errorf("new connection presented %s, want %s", got, serial(second))
	}
	if toks := h.ca.seenTokens(); len(toks) != 2 {
		t.Errorf("CA saw %d requests, want 2", len(toks))
	}
}

func TestRenewTimeJitterIsEarlyOnly(t *testing.T) {
	now := time.Now()
	leaf := &x509.Certificate{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * time.Hour)}
	// NotBefore is backdated: the lifetime counts from the request.
	if got, want := renewTime(leaf, now, 0), now.Add(5*time.Hour); !got.Equal(want) {
		t.Errorf("renewTime(r=0) = %v, want %v", got, want)
	}
	if got, want := renewTime(leaf, now, 1), now.Add(4*time.Hour+30*time.Minute); !got.Equal(want) {
		t.Errorf("renewTime(r=1) = %v, want %v", got, want)
	}
	// A NotBefore after the request (clock skew the other way) counts.
	later := &x509.Certificate{NotBefore: now.Add(time.Hour), NotAfter: now.Add(3 * time.Hour)}
	if got, want := renewTime(later, now, 0), now.Add(2*time.Hour); !got.Equal(want) {
		t.Errorf("renewTime(NotBefore after request) = %v, want %v", got, want)
	}
}

func TestCAErrorsRetriedWithBackoffKeepingOldCertificate(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.BackoffBase, c.BackoffMax = time.Second, 4*time.Second })
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)
	old := h.await(id)

	h.ca.setAnswer(func(signRequest) (*cav1.CreateCertificateResponse, error) {
		return nil, status.Error(codes.Unavailable, "istiod is restarting")
	})
	h.clock.Advance(30 * time.Minute)
	// Jitter 0 waits half of the doubling ceiling, capped at the max.
	for _, want := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 2 * time.Second} {
		ev := h.obs.expect(t, "failed", id)
		if ev.reason != ReasonCA || !isCode(ev.err, codes.Unavailable) {
			t.Fatalf("failure %s: %v; want %s Unavailable", ev.reason, ev.err, ReasonCA)
		}
		if ev.retryIn != want {
			t.Errorf("retry in %v, want %v", ev.retryIn, want)
		}
		svid, err := h.m.Source(id).GetX509SVID()
		if err != nil || serial(svid) != serial(old) {
			t.Fatalf("while renewal fails: %v; want the old certificate", err)
		}
		d := h.dump(id)
		if d.State != StateRenewing || !strings.Contains(d.LastError, "istiod is restarting") || d.NextAttempt.IsZero() {
			t.Errorf("dump while renewal fails: %+v", d)
		}
		h.clock.Advance(ev.retryIn)
	}

	// The old certificate expires while the CA still fails.
	h.clock.Advance(leafOf(old).NotAfter.Sub(h.clock.Now()))
	h.obs.expect(t, "failed", id)
	_, err := h.m.Source(id).GetX509SVID()
	if !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), "istiod is restarting") {
		t.Errorf("GetX509SVID after expiry: %v, want ErrExpired with the CA's error", err)
	}
	if d := h.dump(id); d.State != StateFailed {
		t.Errorf("dump after expiry: %+v, want failed", d)
	}

	h.ca.setAnswer(nil)
	h.clock.Advance(4 * time.Second)
	for ev := h.obs.next(t); ev.kind != "issued"; ev = h.obs.next(t) {
		if ev.kind != "failed" {
			t.Fatalf("unexpected event %+v", ev)
		}
	}
	if svid := h.await(id); serial(svid) == serial(old) {
		t.Error("still the old certificate after the CA recovered")
	}
	if d := h.dump(id); d.State != StateValid || d.Failures != 0 {
		t.Errorf("dump after recovery: %+v", d)
	}
}

func TestReleaseThenLingerDropsIdentity(t *testing.T) {
	h := newHarness(t, nil)
	id := identity("web")
	for range 2 {
		if err := h.m.Want(id); err != nil {
			t.Fatal(err)
		}
	}
	h.obs.expect(t, "issued", id)
	first := h.await(id)

	h.m.Release(id)
	if d := h.dump(id); d.Pods != 1 || !d.DropAt.IsZero() {
		t.Errorf("dump with one pod left: %+v", d)
	}
	h.m.Release(id)
	releasedAt := h.clock.Now()
	if d := h.dump(id); d.Pods != 0 || !d.DropAt.Equal(releasedAt.Add(time.Minute)) {
		t.Errorf("dump with no pod left: %+v, want dropAt %v", d, releasedAt.Add(time.Minute))
	}
	// Lingering: still served.
	if svid, err := h.m.Source(id).GetX509SVID(); err != nil || serial(svid) != serial(first) {
		t.Errorf("lingering identity: %v", err)
	}
	h.m.Release(id) // one too many: ignored

	h.clock.Advance(time.Minute)
	h.obs.expect(t, "dropped", id)
	if _, err := h.m.Source(id).GetX509SVID(); !errors.Is(err, ErrNotWanted) {
		t.Errorf("GetX509SVID after the drop: %v, want ErrNotWanted", err)
	}
	if d := h.m.Dump(); len(d) != 0 {
		t.Errorf("dump after the drop: %+v, want empty", d)
	}

	// A new pod of the identity gets a new certificate.
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)
	if svid := h.await(id); serial(svid) == serial(first) {
		t.Error("the dropped certificate came back")
	}
}

func TestWantDuringLingerKeepsIdentity(t *testing.T) {
	h := newHarness(t, nil)
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)
	first := h.await(id)
	h.m.Release(id)
	h.clock.Advance(30 * time.Second)
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	// Past the drop time the first release would have had, and past
	// renewal: the renewal shows the worker went on with the identity.
	h.clock.Advance(30 * time.Minute)
	h.obs.expect(t, "issued", id)
	if svid := h.await(id); serial(svid) == serial(first) {
		t.Error("not renewed")
	}
	if d := h.dump(id); d.Pods != 1 || !d.DropAt.IsZero() {
		t.Errorf("dump: %+v, want 1 pod and no drop", d)
	}
}

func TestTokenFileIsReadForEveryRequest(t *testing.T) {
	h := newHarness(t, nil)
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)

	// The kubelet rotated the token.
	h.writeToken("token-2")
	h.clock.Advance(30 * time.Minute)
	h.obs.expect(t, "issued", id)

	// The token disappears: nothing is sent, the failure says why.
	h.writeToken("")
	h.clock.Advance(30 * time.Minute)
	ev := h.obs.expect(t, "failed", id)
	if ev.reason != ReasonToken || !strings.Contains(ev.err.Error(), "empty") {
		t.Errorf("failure %s: %v; want %s", ev.reason, ev.err, ReasonToken)
	}
	h.writeToken("token-3")
	h.clock.Advance(ev.retryIn)
	h.obs.expect(t, "issued", id)

	want := []string{"token-1", "token-2", "token-3"}
	if got := h.ca.seenTokens(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("CA saw tokens %q, want %q", got, want)
	}
}

func TestCAServerMustChainToBundle(t *testing.T) {
	other := newRoot(t)
	h := newHarness(t, func(c *Config) {
		c.Bundle = newTestBundle(t, t.TempDir()+"/root-cert.pem", other.Cert)
	})
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	ev := h.obs.expect(t, "failed", id)
	if ev.reason != ReasonCA || !strings.Contains(ev.err.Error(), "server certificate for istiod.cairn-system.svc") {
		t.Errorf("failure %s: %v; want %s refusing istiod's certificate", ev.reason, ev.err, ReasonCA)
	}
	if toks := h.ca.seenTokens(); len(toks) != 0 {
		t.Errorf("the token reached a server ztunnel does not trust: %q", toks)
	}
}

func TestCAServerNameIsChecked(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ServerName = "istiod.elsewhere.svc" })
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	ev := h.obs.expect(t, "failed", id)
	if ev.reason != ReasonCA || !strings.Contains(ev.err.Error(), "istiod.elsewhere.svc") {
		t.Errorf("failure %s: %v; want a name mismatch", ev.reason, ev.err)
	}
	if toks := h.ca.seenTokens(); len(toks) != 0 {
		t.Errorf("the token reached a server with the wrong name: %q", toks)
	}
}

func TestRootRotationRenewsAtOnce(t *testing.T) {
	h := newHarness(t, nil)
	runBundle(t, h.bundle)
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)
	old := h.await(id)

	// The operator adds a new root: the old certificate still chains, so
	// nothing is fetched.
	next := newRoot(t)
	changed := h.bundle.Changed()
	writeRoots(t, h.bundle.path, h.root.Cert, next.Cert)
	awaitClosed(t, changed)

	// The CA signs with the new root (its serving certificate too), and
	// the old root leaves the bundle: renewed without waiting for half
	// life.
	h.ca.setRoot(next)
	changed = h.bundle.Changed()
	writeRoots(t, h.bundle.path, next.Cert)
	awaitClosed(t, changed)
	// Only the second change may fetch.
	h.obs.expect(t, "issued", id)
	svid := h.await(id)
	if serial(svid) == serial(old) {
		t.Fatal("not renewed")
	}
	if !stillTrusted(svid, h.bundle, h.clock.Now()) {
		t.Error("renewed certificate does not chain to the new root")
	}
	if toks := h.ca.seenTokens(); len(toks) != 2 {
		t.Errorf("CA saw %d requests, want 2 (none for the added root)", len(toks))
	}
}

// TestSignerSwitchRenewsUnderTheNewRoot: the three steps of a root
// rotation. A root added to the bundle fetches nothing; when the CA
// switches to signing under it, istiod-lite lists it first, and every
// certificate moves to it long before half life, so that removing the old
// root later leaves no peer with a certificate the others refuse; the
// removal itself then fetches nothing.
func TestSignerSwitchRenewsUnderTheNewRoot(t *testing.T) {
	h := newHarness(t, nil)
	runBundle(t, h.bundle)
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)
	old := h.await(id)

	next := newRoot(t)
	changed := h.bundle.Changed()
	writeRoots(t, h.bundle.path, h.root.Cert, next.Cert) // 1. add the new root
	awaitClosed(t, changed)

	h.ca.setRoot(next) // 2. switch the signer
	changed = h.bundle.Changed()
	writeRoots(t, h.bundle.path, next.Cert, h.root.Cert)
	awaitClosed(t, changed)
	h.obs.expect(t, "issued", id) // the clock has not moved: not a renewal at half life
	svid := h.await(id)
	if serial(svid) == serial(old) || !chainsTo(svid, next.Cert, h.clock.Now()) {
		t.Fatal("the certificate was not renewed under the new root")
	}
	if d := h.dump(id); d.RootSerial != next.Cert.SerialNumber.Text(16) {
		t.Errorf("dump says root %q, want the new root's serial %s", d.RootSerial, next.Cert.SerialNumber.Text(16))
	}

	changed = h.bundle.Changed()
	writeRoots(t, h.bundle.path, next.Cert) // 3. remove the old root
	awaitClosed(t, changed)
	select {
	case ev := <-h.obs.events:
		t.Errorf("removing the old root caused %s %s: the certificate was already under the new one", ev.kind, ev.id)
	case <-time.After(300 * time.Millisecond): // a bounded look for a wrong fetch, not a timing target
	}
	if toks := h.ca.seenTokens(); len(toks) != 2 {
		t.Errorf("CA saw %d requests, want 2 (the first, and the move to the new root)", len(toks))
	}
}

// TestRenewForBundleSpreadsTheMove: the move to a new signing root is
// scheduled at a random moment within RotationSpread, not at once.
func TestRenewForBundleSpreadsTheMove(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RotationSpread = time.Minute })
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)
	h.await(id)
	h.jitter.Store(math.Float64bits(0.25))
	next := newRoot(t)
	writeRoots(t, h.bundle.path, next.Cert, h.root.Cert)
	if err := h.bundle.reload(); err != nil {
		t.Fatal(err)
	}
	h.m.mu.RLock()
	e := h.m.entries[id]
	h.m.mu.RUnlock()
	at, ok := h.m.renewForBundle(e)
	if want := h.clock.Now().Add(15 * time.Second); !ok || !at.Equal(want) {
		t.Errorf("renewForBundle = %v, %v; want %v (a quarter of the spread)", at, ok, want)
	}
}

func TestWantChecksIdentity(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.m.Want(spiffe.Identity{TrustDomain: "cluster.local", Namespace: "shop"}); err == nil {
		t.Error("Want accepted an identity without service account")
	}
	if err := h.m.Want(spiffe.Identity{TrustDomain: "other.example", Namespace: "shop", ServiceAccount: "web"}); err == nil {
		t.Error("Want accepted an identity of another trust domain")
	}
}

func TestRunTwiceAndStop(t *testing.T) {
	h := newHarness(t, nil)
	id := identity("web")
	if err := h.m.Want(id); err != nil {
		t.Fatal(err)
	}
	h.obs.expect(t, "issued", id)
	if err := h.m.Run(context.Background()); err == nil {
		t.Error("second Run did not fail")
	}
	h.stop()
	// After Run: what was issued stays available; nothing new starts.
	if _, err := h.m.Source(id).GetX509SVID(); err != nil {
		t.Errorf("certificate after Run ended: %v", err)
	}
	if err := h.m.Want(identity("late")); err != nil {
		t.Fatal(err)
	}
	if d := h.dump(identity("late")); d.State != StatePending {
		t.Errorf("late identity: %+v", d)
	}
}

func TestWantBeforeRun(t *testing.T) {
	dir := t.TempDir()
	root := newRoot(t)
	clk := newFakeClock()
	ca := newFakeCA(t, root, clk)
	tok := dir + "/token"
	h := &harness{t: t, tokenPath: tok}
	h.writeToken("t")
	obs := newRecorder()
	m, err := newManager(Config{
		Address: ca.addr, ServerName: testServerName, TokenFile: tok,
		Bundle: newTestBundle(t, dir+"/root-cert.pem", root.Cert), Observer: obs, Logger: testLogger(t),
	}, clk, func() float64 { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	id := identity("early")
	if err := m.Want(id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	obs.expect(t, "issued", id)
}

func TestDumpJSON(t *testing.T) {
	h := newHarness(t, nil)
	for _, sa := range []string{"b", "a"} {
		if err := h.m.Want(identity(sa)); err != nil {
			t.Fatal(err)
		}
		h.obs.expect(t, "issued", identity(sa))
	}
	b, err := json.Marshal(h.m.Dump())
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0]["identity"] != identity("a").String() || got[1]["identity"] != identity("b").String() {
		t.Fatalf("dump not sorted by identity: %s", b)
	}
	for _, k := range []string{"state", "pods", "serial", "notBefore", "notAfter", "renewAt"} {
		if _, ok := got[0][k]; !ok {
			t.Errorf("dump lacks %q: %s", k, b)
		}
	}
	for _, k := range []string{"lastError", "dropAt", "nextAttempt", "failures"} {
		if _, ok := got[0][k]; ok {
			t.Errorf("dump of a healthy identity has %q: %s", k, b)
		}
	}
}

func TestConfigRequired(t *testing.T) {
	b := newTestBundle(t, t.TempDir()+"/root-cert.pem", newRoot(t).Cert)
	for name, cfg := range map[string]Config{
		"no token":         {Bundle: b},
		"no bundle":        {TokenFile: "/t"},
		"negative":         {TokenFile: "/t", Bundle: b, TTL: -1},
		"base above max":   {TokenFile: "/t", Bundle: b, BackoffBase: time.Minute, BackoffMax: time.Second},
		"negative linger":  {TokenFile: "/t", Bundle: b, Linger: -time.Second},
		"negative flights": {TokenFile: "/t", Bundle: b, MaxInFlight: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

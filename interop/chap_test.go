package interop

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// Credentials of the CHAP VM. The mutual user name "bob" makes the target's
// final login response, CHAP_N=bob and CHAP_R, a length that is not a
// multiple of 4, so it is padded, and LIO leaves stale bytes in the padding.
const (
	chapUser     = "alice"
	chapSecret   = "alice-secret-0123"
	mutualUser   = "bob"
	mutualSecret = "bob-secret-456789"
)

// TestLIOCHAP logs in to a LIO that requires CHAP and knows mutual
// credentials: one-way and mutual CHAP with every algorithm, and every way of
// getting the credentials wrong.
func TestLIOCHAP(t *testing.T) {
	t.Parallel()
	l := peers.StartLIO(t, peers.LIOOptions{
		LUNSizeMB: 8,
		CHAPUser:  chapUser, CHAPSecret: chapSecret,
		MutualUser: mutualUser, MutualSecret: mutualSecret,
	})

	// login logs in with chap and, if it works, checks the session with an
	// INQUIRY and logs it out; it returns the login's error and the bytes
	// the target sent.
	login := func(t *testing.T, chap *session.CHAP) (*rawConn, error) {
		t.Helper()
		ctx := testCtx(t)
		var raw *rawConn
		s, err := session.Login(ctx, session.Config{
			InitiatorName: initiatorName(t), TargetName: l.IQN, Portal: l.Addr, CHAP: chap,
			WrapConn: func(c net.Conn) net.Conn { raw = &rawConn{Conn: c}; return raw },
		})
		if err != nil {
			return raw, err
		}
		logParams(t, t.Name(), s)
		inq, err := s.Inquiry(ctx, 0)
		if err != nil {
			t.Errorf("INQUIRY: %v", err)
		} else if inq.Vendor != "LIO-ORG" {
			t.Errorf("INQUIRY vendor %q, want LIO-ORG", inq.Vendor)
		}
		if _, err := s.Logout(ctx, session.LogoutOptions{}); err != nil {
			t.Errorf("logout: %v", err)
		}
		waitLIOSessions(t, l, initiatorName(t), 0)
		return raw, nil
	}

	t.Run("NoAuth", func(t *testing.T) {
		// The TPG requires CHAP. LIO 6.1 answers AuthMethod=None by closing
		// the connection without a Login Response ("Proposer's value list
		// "None" contains no valid values from Acceptor's value list
		// "CHAP"" on its console); a target that answers gets a status of
		// class 2.
		raw, err := login(t, nil)
		var le *session.LoginError
		switch {
		case errors.As(err, &le) && le.Status.Class() == 2:
		case errors.Is(err, io.EOF) && raw != nil && len(raw.loginResponses()) == 0:
		default:
			t.Fatalf("login without CHAP: %v, want a *session.LoginError of class 2, or EOF with no Login Response", err)
		}
		t.Logf("LIO refuses AuthMethod=None: %v", err)
		waitLIOSessions(t, l, initiatorName(t), 0)
	})

	t.Run("OneWay", func(t *testing.T) {
		// LIO does not require the initiator to ask for mutual CHAP.
		if _, err := login(t, &session.CHAP{User: chapUser, Secret: chapSecret}); err != nil {
			t.Fatalf("one-way CHAP: %v", err)
		}
	})

	// The VM's kernel has no sha3-256 (no sha3_generic module in its
	// initramfs): LIO then refuses CHAP_A=8 with an authentication failure.
	crypto, err := l.Exec("cat /proc/crypto")
	if err != nil {
		t.Fatal(err)
	}
	hasSHA3 := strings.Contains(crypto, "sha3-256")
	t.Logf("guest kernel has sha3-256: %v", hasSHA3)

	for _, alg := range []struct {
		name string
		a    int
	}{{"MD5", session.CHAPMD5}, {"SHA1", session.CHAPSHA1}, {"SHA256", session.CHAPSHA256}, {"SHA3-256", session.CHAPSHA3256}} {
		if alg.a == session.CHAPSHA3256 && !hasSHA3 {
			t.Run("Unsupported/"+alg.name, func(t *testing.T) {
				raw, err := login(t, &session.CHAP{User: chapUser, Secret: chapSecret, Algorithms: []int{alg.a}})
				var le *session.LoginError
				if !errors.As(err, &le) || le.Status != pdu.LoginAuthFailed {
					t.Fatalf("CHAP_A=%d alone, which the target cannot do: %v, want status 0x0201", alg.a, err)
				}
				for _, p := range raw.loginResponses() {
					t.Logf("target answered: %q", p.data)
				}
				waitLIOSessions(t, l, initiatorName(t), 0)
			})
			continue
		}
		t.Run("OneWay/"+alg.name, func(t *testing.T) {
			if _, err := login(t, &session.CHAP{User: chapUser, Secret: chapSecret, Algorithms: []int{alg.a}}); err != nil {
				t.Fatalf("one-way CHAP with CHAP_A=%d: %v", alg.a, err)
			}
		})
		t.Run("Mutual/"+alg.name, func(t *testing.T) {
			raw, err := login(t, &session.CHAP{User: chapUser, Secret: chapSecret,
				TargetUser: mutualUser, TargetSecret: mutualSecret, Algorithms: []int{alg.a}})
			if err != nil {
				t.Fatalf("mutual CHAP with CHAP_A=%d: %v", alg.a, err)
			}
			// Find the target's answer to our challenge and show its padding.
			found := false
			for _, p := range raw.loginResponses() {
				if !bytes.Contains(p.data, []byte("CHAP_R=")) {
					continue
				}
				found = true
				t.Logf("target's CHAP_N/CHAP_R: DataSegmentLength %d, padding %q: %q", p.dsl, p.padding, p.data)
				if !bytes.Contains(p.data, []byte("CHAP_N="+mutualUser+"\x00")) {
					t.Errorf("target's answer does not name %q: %q", mutualUser, p.data)
				}
				if p.dsl%4 == 0 {
					t.Errorf("DataSegmentLength %d is a multiple of 4: the padding case is not exercised", p.dsl)
				}
				if !bytes.Equal(p.padding, make([]byte, len(p.padding))) {
					t.Logf("LIO's padding is not zero (%x): ignored, as it must be", p.padding)
				}
			}
			if !found {
				t.Fatalf("no Login Response with CHAP_R among %d", len(raw.loginResponses()))
			}
		})
	}

	t.Run("Mutual/Default", func(t *testing.T) {
		// Our default offer (SHA3-256, SHA-256, SHA-1, MD5): LIO picks the
		// first it supports.
		raw, err := login(t, &session.CHAP{User: chapUser, Secret: chapSecret, TargetUser: mutualUser, TargetSecret: mutualSecret})
		if err != nil {
			t.Fatalf("mutual CHAP: %v", err)
		}
		for _, p := range raw.loginResponses() {
			if i := bytes.Index(p.data, []byte("CHAP_A=")); i >= 0 {
				t.Logf("LIO chose %q", bytes.TrimRight(p.data[i:i+8], "\x00"))
			}
		}
	})

	authFailed := func(t *testing.T, err error) {
		t.Helper()
		var le *session.LoginError
		if !errors.As(err, &le) || le.Status != pdu.LoginAuthFailed {
			t.Fatalf("login: %v, want a *session.LoginError with status 0x0201", err)
		}
		if !strings.Contains(err.Error(), "authentication failure (0x0201)") {
			t.Errorf("error %q does not say authentication failure (0x0201)", err)
		}
	}
	t.Run("WrongSecret", func(t *testing.T) {
		_, err := login(t, &session.CHAP{User: chapUser, Secret: "not-alice-secret"})
		authFailed(t, err)
		if strings.Contains(err.Error(), "not-alice-secret") {
			t.Errorf("error %q shows the secret", err)
		}
		waitLIOSessions(t, l, initiatorName(t), 0)
	})
	t.Run("WrongUser", func(t *testing.T) {
		_, err := login(t, &session.CHAP{User: "mallory", Secret: chapSecret})
		authFailed(t, err)
		waitLIOSessions(t, l, initiatorName(t), 0)
	})
	t.Run("WrongSecretMutual", func(t *testing.T) {
		_, err := login(t, &session.CHAP{User: chapUser, Secret: "not-alice-secret", TargetUser: mutualUser, TargetSecret: mutualSecret})
		authFailed(t, err)
		waitLIOSessions(t, l, initiatorName(t), 0)
	})
	t.Run("WrongTargetSecret", func(t *testing.T) {
		// LIO proves it knows bob's real secret, which is not the one we
		// hold: we must refuse the target.
		start := time.Now()
		_, err := login(t, &session.CHAP{User: chapUser, Secret: chapSecret, TargetUser: mutualUser, TargetSecret: "not-bob-secret-00"})
		var ne *session.NegotiationError
		if !errors.As(err, &ne) || ne.Key != "CHAP_R" {
			t.Fatalf("login: %v, want a *session.NegotiationError on CHAP_R", err)
		}
		t.Logf("refused in %v: %v", time.Since(start), err)
		if strings.Contains(err.Error(), "not-bob-secret") {
			t.Errorf("error %q shows the secret", err)
		}
		waitLIOSessions(t, l, initiatorName(t), 0)
	})
	t.Run("WrongTargetUser", func(t *testing.T) {
		_, err := login(t, &session.CHAP{User: chapUser, Secret: chapSecret, TargetUser: "carol", TargetSecret: mutualSecret})
		var ne *session.NegotiationError
		if !errors.As(err, &ne) || ne.Key != "CHAP_N" {
			t.Fatalf("login: %v, want a *session.NegotiationError on CHAP_N", err)
		}
		t.Logf("refused: %v", err)
		waitLIOSessions(t, l, initiatorName(t), 0)
	})
	waitLIOSessions(t, l, "", 0)
}

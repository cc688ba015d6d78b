package iscsitest

import (
	"fmt"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

var (
	oneWay = &CHAP{User: "alice", Secret: "alice-secret-1"}
	mutual = &CHAP{User: "alice", Secret: "alice-secret-1", MutualUser: "target", MutualSecret: "target-secret-2"}
)

func TestCHAP(t *testing.T) {
	for _, tc := range []struct {
		algs  []int
		offer string
		want  string
		chap  *CHAP
	}{
		{nil, "5", "5", oneWay},
		{nil, "7,5", "5", mutual},
		{[]int{7, 5}, "7,5", "7", oneWay},
		{[]int{7, 5}, "7,5", "7", mutual},
		{[]int{5, 6, 7, 8}, "8,7,6,5", "8", mutual},
		{[]int{5, 6}, "6", "6", mutual},
	} {
		t.Run(fmt.Sprintf("%v/%s/mutual=%v", tc.algs, tc.offer, tc.chap.MutualUser != ""), func(t *testing.T) {
			tg := newTarget(t, Config{CHAP: tc.chap, CHAPAlgorithms: tc.algs})
			i := dial(t, tg)
			i.login(loginOpts{chap: tc.chap, alg: tc.offer})
			if i.negotiated["CHAP_A"] != tc.want {
				t.Fatalf("CHAP_A=%s, want %s", i.negotiated["CHAP_A"], tc.want)
			}
			if c, err := pdu.ParseBinary(i.negotiated["CHAP_C"], pdu.MaxBinaryValueLen); err != nil || len(c) < 16 {
				t.Fatalf("CHAP_C %q: %v", i.negotiated["CHAP_C"], err)
			}
			i.write(0, 0, pattern(4096, 9))
			if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
				t.Fatalf("logout %+v", lr)
			}
		})
	}
}

func TestCHAPFailures(t *testing.T) {
	tg := newTarget(t, Config{CHAP: mutual})
	for _, tc := range []struct {
		name string
		o    loginOpts
	}{
		{"wrong secret", loginOpts{chap: &CHAP{User: "alice", Secret: "wrong-secret-x", MutualUser: "target",
			MutualSecret: "target-secret-2"}}},
		{"wrong user", loginOpts{chap: &CHAP{User: "bob", Secret: "alice-secret-1", MutualUser: "target",
			MutualSecret: "target-secret-2"}}},
		{"algorithm not offered", loginOpts{chap: mutual, alg: "6,7"}},
		{"reflected challenge", loginOpts{chap: mutual, reflect: true}},
		{"no mutual challenge", loginOpts{chap: oneWay}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := dial(t, tg)
			if st := i.tryLogin(tc.o); st != pdu.LoginAuthFailed {
				t.Fatalf("login: %s, want %s", st, pdu.LoginAuthFailed)
			}
			i.expectClosed(false)
		})
	}
	t.Run("no CHAP offered", func(t *testing.T) {
		i := dial(t, tg)
		if st := i.tryLogin(loginOpts{}); st != pdu.LoginAuthFailed {
			t.Fatalf("login with AuthMethod=None: %s", st)
		}
	})
	t.Run("security stage skipped", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginAuthFailed, 1, 3, true, initiatorName, targetName)
	})
	t.Run("leaving security unauthenticated", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginAuthFailed, 0, 1, true, initiatorName, targetName)
	})
	t.Run("CHAP keys out of order", func(t *testing.T) {
		i := dial(t, tg)
		if r, _ := i.loginReq(0, 1, false, initiatorName, targetName, pdu.KV{Key: "AuthMethod", Value: "CHAP"}); r.Status() != 0 {
			t.Fatal(r.Status())
		}
		loginFails(t, i, pdu.LoginAuthFailed, 0, 1, false, pdu.KV{Key: "CHAP_N", Value: "alice"})
	})
	t.Run("CHAP_C too long", func(t *testing.T) {
		o := loginOpts{chap: mutual, mutualC: make([]byte, pdu.MaxBinaryValueLen+1)}
		i := dial(t, tg)
		if st := i.tryLogin(o); st == 0 {
			t.Fatal("login with a 1025-byte CHAP_C succeeded")
		}
	})
	if st := tg.Stats(); st.Logins != 0 {
		t.Fatalf("%d logins succeeded", st.Logins)
	}
}

func TestCHAPNotConfigured(t *testing.T) {
	tg := newTarget(t, Config{})
	i := dial(t, tg)
	loginFails(t, i, pdu.LoginAuthFailed, 0, 1, true, initiatorName, targetName, pdu.KV{Key: "AuthMethod", Value: "CHAP"})
}

// TestCHAPReflectionAcrossConnections refuses, on a second connection, the
// challenge the target sent on the first.
func TestCHAPReflectionAcrossConnections(t *testing.T) {
	tg := newTarget(t, Config{CHAP: mutual})
	a := dial(t, tg)
	a.login(loginOpts{chap: mutual, op: []pdu.KV{{Key: "MaxConnections", Value: "2"}}})
	sent, err := pdu.ParseBinary(a.negotiated["CHAP_C"], pdu.MaxBinaryValueLen)
	if err != nil {
		t.Fatal(err)
	}
	b := dial(t, tg)
	b.join(a, 1)
	if st := b.tryLogin(loginOpts{chap: mutual, mutualC: sent}); st != pdu.LoginAuthFailed {
		t.Fatalf("second connection reflecting the first one's challenge: %s", st)
	}
	c := dial(t, tg)
	c.join(a, 1)
	c.login(loginOpts{chap: mutual})
	c.nop(nil)
}

package iscsitest_test

import (
	"fmt"
	"net"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// A target whose sessions with one ISID answer logout with "cleanup
// failed", while every other session logs out normally.
func ExampleFailLogout() {
	faulty := [6]byte{0x80, 0, 0, 0, 0, 2}
	tg := iscsitest.NewTarget(iscsitest.Config{
		LUNs: []int64{8 << 20},
		Hook: iscsitest.FailLogout(iscsitest.SessionISID(faulty), pdu.LogoutCleanupFailed, 2, 20),
	})
	defer tg.Close()

	// Log in to tg.Addr() with the initiator under test, log out, then
	// look at the target's own view.
	for _, s := range tg.Sessions() {
		fmt.Printf("%#x logged out: %v\n", s.TSIH, s.LoggedOut)
	}
}

// Hooks compose: drop the first Logout Request of every session, reset
// the connection on a NOP-Out with data, and let everything else through.
func ExampleChain() {
	hook := iscsitest.Chain(
		iscsitest.Once(iscsitest.NoLogoutResponse(nil)),
		func(ev *iscsitest.Event) iscsitest.Action {
			if ev.Header.Opcode() == pdu.OpNOPOut && len(ev.Data) > 0 {
				return iscsitest.Reset
			}
			return iscsitest.Continue
		},
	)
	tg := iscsitest.NewTarget(iscsitest.Config{Hook: hook, NopInInterval: time.Second})
	defer tg.Close()
	_ = tg.Addr()
}

// Pipe serves a connection without TCP; the target asks the initiator to
// log out with an Asynchronous Message once it has logged in.
func ExampleTarget_SendAsync() {
	tg := iscsitest.NewTarget(iscsitest.Config{})
	defer tg.Close()
	var nc net.Conn = tg.Pipe()
	defer nc.Close()
	// ... log in on nc, then:
	for _, s := range tg.Sessions() {
		for _, cid := range s.CIDs {
			tg.SendAsync(s.TSIH, cid, pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 5}, nil)
		}
	}
}

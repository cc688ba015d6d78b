package initiator_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/iscsitest"
)

// Log in to a target twice with two connections each, write and read back,
// then log out of every session and connection of the target at once and
// look at what happened on each connection.
func Example() {
	const target = "iqn.2026-01.org.example:disk1"
	// An in-memory target stands in for a real one here.
	t := iscsitest.NewTarget(iscsitest.Config{Name: target})
	defer t.Close()

	ini, err := initiator.New(initiator.Config{Name: "iqn.2026-01.org.example:host1"})
	if err != nil {
		log.Fatal(err)
	}
	defer ini.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 {
		if _, err := ini.Login(ctx, t.Addr(), target, initiator.LoginOptions{Connections: 2}); err != nil {
			log.Fatal(err)
		}
	}

	s := ini.Sessions(target)[0]
	data := bytes.Repeat([]byte("goiscsi!"), 512) // 8 blocks of 512 bytes
	if err := s.Write(ctx, 0, 0, 512, data); err != nil {
		log.Fatal(err) // a write is done only when this is nil
	}
	got := make([]byte, len(data))
	if err := s.Read(ctx, 0, 0, 512, got); err != nil {
		log.Fatal(err)
	}
	fmt.Println("read back:", bytes.Equal(got, data))

	// LogoutFromTarget returns at once; a malformed name is an error
	// wrapping initiator.ErrInvalidArg.
	op, err := ini.LogoutFromTarget(target)
	if err != nil {
		log.Fatal(err)
	}
	res, err := op.Wait(ctx) // err only if ctx ends first; see op.Status, op.Cancel
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (HRESULT 0x%08X)\n", res.Outcome, res.HRESULT())
	for _, sr := range res.Sessions {
		for _, c := range sr.Conns {
			fmt.Printf("session 0x%04x connection %d: %s\n", sr.TSIH, c.CID, c.Detail())
		}
	}
	// Output:
	// read back: true
	// success (HRESULT 0x00000000)
	// session 0x0001 connection 0: logged out
	// session 0x0001 connection 1: logged out
	// session 0x0002 connection 0: logged out
	// session 0x0002 connection 1: logged out
}

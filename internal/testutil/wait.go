package testutil

import (
	"testing"
	"time"
)

// Go runs f in a goroutine of its own and returns a channel that receives
// its result; the channel is buffered, so the goroutine never blocks on a
// test that stopped looking.
func Go[T any](f func() T) <-chan T {
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	return ch
}

// Recv returns the next value from ch, failing the test if none comes
// within d; what names the wait in the failure.
func Recv[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case v := <-ch:
		return v
	case <-tm.C:
		t.Fatalf("%s: nothing in %v", what, d)
	}
	panic("unreachable")
}

// Eventually polls cond until it holds, failing the test with what and
// cond's last detail after d. It is for a peer's own view, which changes in
// another process with no signal to wait on.
func Eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

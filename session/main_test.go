package session

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test ends with no goroutine of the package left: Close and Logout
// wait for theirs.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

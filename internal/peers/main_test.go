package peers

import (
	"testing"

	"go.uber.org/goleak"
)

// Every peer a test starts is stopped, and with it the goroutines that
// wait for its process.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

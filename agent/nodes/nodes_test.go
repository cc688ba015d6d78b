package nodes

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const target = "iqn.2026-01.org.goiscsi.test:nodes"

// TestStoreSurvivesReopen writes records, closes the store, opens it again
// and finds them as written, in their normal form, with the file mode 0600.
func TestStoreSurvivesReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	n, created, err := s.Put(Node{Target: "IQN.2026-01.org.goiscsi.test:Nodes", Portals: []string{"127.0.0.1", "[::1]:3261"},
		Startup: Automatic, Auth: &Auth{User: "u", SecretFile: "/etc/secret"}, Options: Options{Connections: 2}})
	if err != nil || !created {
		t.Fatalf("Put: created %v, %v", created, err)
	}
	if n.Target != target || n.Portals[0] != "127.0.0.1:3260" || n.Portals[1] != "[::1]:3261" {
		t.Errorf("Put normalized to %+v", n)
	}
	if _, _, err := s.Put(Node{Target: "iqn.2026-01.org.goiscsi.test:other", Portals: []string{"h:1"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("store file: %v, %v", st, err)
	}

	s, err = Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	if got.Startup != Automatic || got.Auth == nil || got.Auth.SecretFile != "/etc/secret" || got.Options.Connections != 2 ||
		!got.Created.Equal(n.Created) {
		t.Errorf("after reopening: %+v, want %+v", got, n)
	}
	all, err := s.List()
	if err != nil || len(all) != 2 || all[0].Target != "iqn.2026-01.org.goiscsi.test:nodes" || all[1].Startup != Manual {
		t.Fatalf("List: %+v, %v", all, err)
	}

	// Replacing keeps the creation time and says it is not new.
	n2, created, err := s.Put(Node{Target: target, Portals: []string{"h2"}, Startup: Manual})
	if err != nil || created || !n2.Created.Equal(n.Created) || n2.Updated.Before(n.Updated) || n2.Portals[0] != "h2:3260" {
		t.Errorf("replace: %+v created %v, %v", n2, created, err)
	}

	if err := s.Delete(target); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(target); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v", err)
	}
	if err := s.Delete(target); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v", err)
	}
}

// TestStoreLocked: a second Open of the same directory fails with ErrLocked
// within its wait, and succeeds once the first is closed.
func TestStoreLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := Open(dir, 50*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second Open took %s", d)
	}
	s.Close()
	s, err = Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestValidate refuses what a login could not use, with ErrInvalidArg.
func TestValidate(t *testing.T) {
	for _, n := range []Node{
		{Target: "not-a-name", Portals: []string{"h"}},
		{Target: target},
		{Target: target, Portals: []string{"[x]y"}},
		{Target: target, Portals: []string{"h"}, Startup: "sometimes"},
		{Target: target, Portals: []string{"h"}, Auth: &Auth{User: "u"}},
		{Target: target, Portals: []string{"h"}, Auth: &Auth{SecretFile: "/a", SecretEnv: "B"}},
		{Target: target, Portals: []string{"h"}, Auth: &Auth{SecretFile: "relative"}},
		{Target: target, Portals: []string{"h"}, Auth: &Auth{SecretEnv: "S", TargetUser: "t"}},
		{Target: target, Portals: []string{"h"}, Options: Options{Connections: -1}},
	} {
		if err := n.Validate(); !errors.Is(err, initiator.ErrInvalidArg) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidArg", n, err)
		}
	}
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Put(Node{Target: target}); !errors.Is(err, initiator.ErrInvalidArg) {
		t.Errorf("Put of an invalid record: %v", err)
	}
	if all, _ := s.List(); len(all) != 0 {
		t.Errorf("an invalid record was stored: %+v", all)
	}
}

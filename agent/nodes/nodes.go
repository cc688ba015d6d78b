// Package nodes keeps the agent's node records: the targets it knows, at
// which portals, how to authenticate (a reference to a secret, never the
// secret), with which login options, and whether to log in at start.
//
// The records live in a bbolt file (go.etcd.io/bbolt) under the agent's
// state directory. bbolt rather than a JSON file of our own because it gives
// what such a file would have to reimplement, each a place to get wrong:
// every change is an ACID transaction written copy-on-write and fsynced on
// commit, so a crash or a full disk leaves the previous records intact (no
// temporary file, rename and directory fsync to get right); and it takes an
// exclusive flock on the file, so a second agent on the same state directory
// fails at start with a clear error instead of two processes overwriting
// each other's records. It is pure Go (no cgo), small, and kept by etcd,
// which runs on it. Values are JSON, so a record can be read with bbolt's own
// tools and a future field is added without a migration.
package nodes

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	bolt "go.etcd.io/bbolt"
)

// Startup says whether the agent logs in to a node when it starts.
type Startup string

// Startup modes.
const (
	// Automatic: the agent logs in to the node at start.
	Automatic Startup = "automatic"
	// Manual: the record is kept; a login is asked for explicitly.
	Manual Startup = "manual"
)

// ParseStartup parses "automatic" or "manual" (also "auto").
func ParseStartup(s string) (Startup, error) {
	switch strings.ToLower(s) {
	case "automatic", "auto":
		return Automatic, nil
	case "manual":
		return Manual, nil
	}
	return "", fmt.Errorf("%w: startup %q: want automatic or manual", initiator.ErrInvalidArg, s)
}

// Auth says how to authenticate to a node: CHAP with secrets read at login
// time from a file or an environment variable of the agent. A record never
// holds a secret itself.
type Auth struct {
	// User is the CHAP user name; empty means the initiator's name.
	User string `json:"user,omitempty"`
	// SecretFile or SecretEnv names where the CHAP secret is.
	SecretFile string `json:"secretFile,omitempty"`
	SecretEnv  string `json:"secretEnv,omitempty"`
	// TargetUser, TargetSecretFile and TargetSecretEnv are for mutual
	// CHAP.
	TargetUser       string `json:"targetUser,omitempty"`
	TargetSecretFile string `json:"targetSecretFile,omitempty"`
	TargetSecretEnv  string `json:"targetSecretEnv,omitempty"`
	// Algorithms are the CHAP_A values to offer, in order; empty means the
	// library's default.
	Algorithms []int `json:"algorithms,omitempty"`
	// AllowShortSecret accepts secrets shorter than 12 bytes.
	AllowShortSecret bool `json:"allowShortSecret,omitempty"`
}

// Options are a node's login options.
type Options struct {
	// Sessions is how many sessions to open; 0 means 1.
	Sessions int `json:"sessions,omitempty"`
	// Connections per session; 0 means 1.
	Connections  int  `json:"connections,omitempty"`
	HeaderDigest bool `json:"headerDigest,omitempty"`
	DataDigest   bool `json:"dataDigest,omitempty"`
	// LoginTimeoutMs bounds each login; 0 means 15 s.
	LoginTimeoutMs int64 `json:"loginTimeoutMs,omitempty"`
	// ErrorRecoveryLevel is the highest level offered (0-2); nil means the
	// library's default, 2.
	ErrorRecoveryLevel *int `json:"errorRecoveryLevel,omitempty"`
	// Time2Retain is the DefaultTime2Retain offered, in seconds (0-3600).
	Time2Retain int `json:"time2retain,omitempty"`
}

// Node is one node record.
type Node struct {
	// Target is the target's iSCSI name in its normal form: the record's
	// key.
	Target string `json:"target"`
	// Portals are host:port addresses; a login tries them in order.
	Portals []string `json:"portals"`
	Auth    *Auth    `json:"auth,omitempty"`
	Options Options  `json:"options"`
	Startup Startup  `json:"startup"`
	// Created and Updated are set by the store.
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// Validate checks the record and puts the target name and portals in
// their normal form. Errors wrap initiator.ErrInvalidArg.
func (n *Node) Validate() error {
	name, err := initiator.NormalizeName(n.Target)
	if err != nil {
		return err
	}
	n.Target = name
	if len(n.Portals) == 0 {
		return fmt.Errorf("%w: node %s: no portal", initiator.ErrInvalidArg, name)
	}
	for i, p := range n.Portals {
		np, err := NormalizePortal(p)
		if err != nil {
			return err
		}
		n.Portals[i] = np
	}
	if n.Startup == "" {
		n.Startup = Manual
	}
	if _, err := ParseStartup(string(n.Startup)); err != nil {
		return err
	}
	o := n.Options
	if o.Sessions < 0 || o.Connections < 0 || o.LoginTimeoutMs < 0 {
		return fmt.Errorf("%w: node %s: negative sessions, connections or login timeout", initiator.ErrInvalidArg, name)
	}
	if err := CheckRecovery(o.ErrorRecoveryLevel, o.Time2Retain); err != nil {
		return fmt.Errorf("%w: node %s: %w", initiator.ErrInvalidArg, name, err)
	}
	if a := n.Auth; a != nil {
		if a.SecretFile != "" && a.SecretEnv != "" || a.TargetSecretFile != "" && a.TargetSecretEnv != "" {
			return fmt.Errorf("%w: node %s: a secret comes from a file or an environment variable, not both", initiator.ErrInvalidArg, name)
		}
		if a.SecretFile == "" && a.SecretEnv == "" {
			return fmt.Errorf("%w: node %s: CHAP without a secret file or environment variable", initiator.ErrInvalidArg, name)
		}
		if a.TargetUser != "" && a.TargetSecretFile == "" && a.TargetSecretEnv == "" {
			return fmt.Errorf("%w: node %s: mutual CHAP without a target secret file or environment variable", initiator.ErrInvalidArg, name)
		}
		for _, f := range []*string{&a.SecretFile, &a.TargetSecretFile} {
			if *f != "" && !filepath.IsAbs(*f) {
				// The agent reads it, from its own working directory.
				return fmt.Errorf("%w: node %s: secret file %q: want an absolute path", initiator.ErrInvalidArg, name, *f)
			}
		}
	}
	return nil
}

// NormalizePortal adds the iSCSI port 3260 to a portal given without one.
func NormalizePortal(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: empty portal", initiator.ErrInvalidArg)
	}
	if _, _, err := net.SplitHostPort(p); err == nil {
		return p, nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(p, "["), "]")
	if host == "" || strings.ContainsAny(host, "[]") {
		return "", fmt.Errorf("%w: portal %q: want host or host:port", initiator.ErrInvalidArg, p)
	}
	return net.JoinHostPort(host, "3260"), nil
}

// ErrNotFound is the error of Get and Delete for a target with no record.
var ErrNotFound = errors.New("no node record for the target")

// ErrLocked is the error of Open when another process holds the store.
var ErrLocked = errors.New("the node store is in use by another process (an agent running on the same state directory?)")

// schemaVersion is the version of the records' layout, kept in the meta
// bucket; a store written by a newer layout is refused rather than misread.
const schemaVersion = 1

var (
	bucketNodes = []byte("nodes")
	bucketMeta  = []byte("meta")
	keyVersion  = []byte("schemaVersion")
)

// FileName is the store's file name in the state directory.
const FileName = "nodes.db"

// Store is the node records of one state directory. Its methods are safe
// for concurrent use.
type Store struct {
	db   *bolt.DB
	path string
}

// Open opens (creating it and the directory if needed, mode 0700/0600) the
// store in dir. It waits at most lockWait for another process to release
// the file, then fails with ErrLocked.
func Open(dir string, lockWait time.Duration) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: max(lockWait, time.Millisecond)})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the node store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketNodes); err != nil {
			return err
		}
		if v := meta.Get(keyVersion); v != nil {
			var n int
			if err := json.Unmarshal(v, &n); err != nil || n > schemaVersion {
				return fmt.Errorf("records of schema version %s; this iscsictl reads version %d", v, schemaVersion)
			}
			return nil
		}
		return meta.Put(keyVersion, []byte(fmt.Sprint(schemaVersion)))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("node store %s: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// Path returns the store's file.
func (s *Store) Path() string { return s.path }

// Close closes the store and releases its lock.
func (s *Store) Close() error { return s.db.Close() }

// Put validates n and writes it, replacing a record of the same target
// (whose creation time it keeps). It reports whether the record is new.
func (s *Store) Put(n Node) (Node, bool, error) {
	n.Portals = slices.Clone(n.Portals)
	if err := n.Validate(); err != nil {
		return Node{}, false, err
	}
	created := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		now := time.Now().UTC()
		n.Created, n.Updated = now, now
		if old := b.Get([]byte(n.Target)); old != nil {
			var prev Node
			if json.Unmarshal(old, &prev) == nil && !prev.Created.IsZero() {
				n.Created = prev.Created
			}
		} else {
			created = true
		}
		v, err := json.Marshal(n)
		if err != nil {
			return err
		}
		return b.Put([]byte(n.Target), v)
	})
	if err != nil {
		return Node{}, false, fmt.Errorf("writing node %s: %w", n.Target, err)
	}
	return n, created, nil
}

// Get returns the record of target, or ErrNotFound.
func (s *Store) Get(target string) (Node, error) {
	key, err := initiator.NormalizeName(target)
	if err != nil {
		return Node{}, err
	}
	var n Node
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketNodes).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("%s: %w", key, ErrNotFound)
		}
		return decode(key, v, &n)
	})
	return n, err
}

// List returns every record, by target name.
func (s *Store) List() ([]Node, error) {
	out := []Node{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
			var n Node
			if err := decode(string(k), v, &n); err != nil {
				return err
			}
			out = append(out, n)
			return nil
		})
	})
	return out, err
}

// Delete removes the record of target, or returns ErrNotFound.
func (s *Store) Delete(target string) error {
	key, err := initiator.NormalizeName(target)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		if b.Get([]byte(key)) == nil {
			return fmt.Errorf("%s: %w", key, ErrNotFound)
		}
		return b.Delete([]byte(key))
	})
}

func decode(key string, v []byte, n *Node) error {
	if err := json.Unmarshal(v, n); err != nil {
		return fmt.Errorf("node record %s is corrupt: %w", key, err)
	}
	return nil
}

// CheckRecovery checks an offered ErrorRecoveryLevel (nil: the default) and
// DefaultTime2Retain against their ranges (RFC 7143 §13.16, §13.20).
func CheckRecovery(erl *int, time2retain int) error {
	if erl != nil && (*erl < 0 || *erl > 2) {
		return fmt.Errorf("errorRecoveryLevel %d: want 0, 1 or 2", *erl)
	}
	if time2retain < 0 || time2retain > 3600 {
		return fmt.Errorf("time2retain %d: want 0 to 3600 seconds", time2retain)
	}
	return nil
}

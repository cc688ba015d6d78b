package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/goiscsi/iscsi/iscsitest"
)

// idPatterns are the notations of docs/JSON.md for identifiers, by key.
var idPatterns = map[string]*regexp.Regexp{
	"tsih": regexp.MustCompile(`^0x[0-9a-f]{4}$`),
	"cid":  regexp.MustCompile(`^0x[0-9a-f]{4}$`),
	"isid": regexp.MustCompile(`^0x[0-9a-f]{12}$`),
	"itt":  regexp.MustCompile(`^0x[0-9a-f]{8}$`),
}

// jsonKey is what a key of a JSON document may be: a name, never a
// message.
var jsonKey = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*$`)

// checkJSONDoc checks a document against the rules of docs/JSON.md: the
// schema version, identifiers in one notation, keys that are names, and
// counts that add up.
func checkJSONDoc(t *testing.T, what string, v map[string]any) {
	t.Helper()
	if v["schemaVersion"] != 1.0 {
		t.Errorf("%s: schemaVersion %v, want 1", what, v["schemaVersion"])
	}
	var walk func(p string, x any)
	walk = func(p string, x any) {
		switch x := x.(type) {
		case map[string]any:
			for k, e := range x {
				if !jsonKey.MatchString(k) {
					t.Errorf("%s: key %q at %s is not a name", what, k, p)
				}
				if re, ok := idPatterns[k]; ok {
					if s, ok := e.(string); !ok || !re.MatchString(s) {
						t.Errorf("%s: %s.%s = %v, want %s", what, p, k, e, re)
					}
				}
				if k == "connections" {
					// A list of CIDs (login, sessions) or of results.
					for _, c := range e.([]any) {
						if s, ok := c.(string); ok && !idPatterns["cid"].MatchString(s) {
							t.Errorf("%s: %s.connections holds %v", what, p, c)
						}
					}
				}
				walk(p+"."+k, e)
			}
			checkCounts(t, what+" at "+p, x)
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", p, i), e)
			}
		}
	}
	walk("", v)
}

// num returns m[k] as an int.
func num(m map[string]any, k string) int {
	f, _ := m[k].(float64)
	return int(f)
}

// checkCounts checks the sums docs/JSON.md promises in one object.
func checkCounts(t *testing.T, where string, m map[string]any) {
	t.Helper()
	if c, ok := m["commands"].(map[string]any); ok {
		if num(c, "total") != num(c, "completed")+num(c, "aborted")+num(c, "unknown") {
			t.Errorf("%s: commands %v do not add up", where, c)
		}
		// A result's commands are the sum of its parts'.
		for _, part := range []string{"sessions", "connections"} {
			list, ok := m[part].([]any)
			if !ok || len(list) == 0 {
				continue
			}
			if _, ok := list[0].(map[string]any); !ok {
				continue
			}
			sum := 0
			for _, e := range list {
				sum += num(e.(map[string]any)["commands"].(map[string]any), "total")
			}
			if sum != num(c, "total") {
				t.Errorf("%s: commands total %d, its %s' add up to %d", where, num(c, "total"), part, sum)
			}
		}
	}
	if _, ok := m["failedCommands"]; ok {
		if num(m, "failedCommands") != num(m["commands"].(map[string]any), "unknown") {
			t.Errorf("%s: failedCommands %v, commands.unknown %v", where, m["failedCommands"], m["commands"])
		}
	}
	if _, ok := m["sessionCount"]; ok {
		n := len(m["sessions"].([]any))
		if num(m, "sessionCount") != n || m["loggedOut"] != nil && num(m, "loggedOut")+num(m, "notLoggedOut") != n {
			t.Errorf("%s: sessionCount %v, loggedOut %v, notLoggedOut %v, %d sessions", where, m["sessionCount"], m["loggedOut"], m["notLoggedOut"], n)
		}
	}
	if errs, ok := m["errors"].([]any); ok {
		sum := 0
		for _, e := range errs {
			sum += num(e.(map[string]any), "count")
		}
		if sum != num(m, "failed") || num(m, "total") != num(m, "completed")+num(m, "failed")+num(m, "refused") {
			t.Errorf("%s: failed %v, errors add up to %d; total %v", where, m["failed"], sum, m["total"])
		}
	}
}

// TestJSONSchema runs the commands with --json and checks every document
// against docs/JSON.md.
func TestJSONSchema(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{})
	u := "iscsi://" + tg.Addr() + "/" + cliTarget
	pcap := filepath.Join(t.TempDir(), "login.pcap")
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"demo", "--sessions", "2", "--conns", "2", "--io"}, exitOK},
		{[]string{"demo", "--sessions", "3", "--conns", "2", "--fail-sessions", "1", "--fault", "reset"}, exitIncomplete},
		{[]string{"demo", "--sessions", "2", "--conns", "1", "--io", "--in-flight", "fail", "--fail-sessions", "2", "--fault", "no-response", "--logout-timeout", "300ms"}, exitFailed},
		{[]string{"logout", "-t", cliTarget, "-n", "0"}, exitNotFound},
		{[]string{"logout", u, "-n", "2", "-c", "2", "--io"}, exitOK},
		{[]string{"login", u, "-n", "2", "--pcap", pcap}, exitOK},
		{[]string{"decode", pcap}, exitOK},
		{[]string{"discover", "iscsi://" + tg.Addr()}, exitOK},
		{[]string{"inquiry", u}, exitOK},
		{[]string{"readcap", u}, exitOK},
		{[]string{"read", u + "/0", "--lba", "0", "--blocks", "1", "--out", filepath.Join(t.TempDir(), "b")}, exitOK},
		{[]string{"write", u + "/0", "--lba", "0", "--blocks", "1", "--verify"}, exitOK},
		{[]string{"perf", u + "/0", "--duration", "300ms", "--qd", "2"}, exitOK},
		{[]string{"version"}, exitOK},
		{[]string{"sessions", "surplus"}, exitInvalidArg},
		{[]string{"readcap", "-p", "127.0.0.1:1", "-t", "iqn.2001-04.com.example:x"}, exitError},
	} {
		r := iscsictl(t, append(c.args, "--json")...).want(t, c.code)
		checkJSONDoc(t, fmt.Sprint(c.args), r.json(t))
	}
}

package reliability

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMatrixMatchesDoc checks docs/RELIABILITY.md against the tests: every
// TestFault… function has a row, and every row names a test that exists.
func TestMatrixMatchesDoc(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "RELIABILITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The fuzzing section names tests of package fuzz.
	ours, _, _ := strings.Cut(string(doc), "## Fuzzing")
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("`(Test[A-Za-z0-9]+)`").FindAllStringSubmatch(ours, -1) {
		rows[m[1]] = true
	}
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]bool{}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && strings.HasPrefix(fd.Name.Name, "Test") {
				tests[fd.Name.Name] = true
			}
		}
	}
	faults := 0
	for name := range tests {
		if strings.HasPrefix(name, "TestFault") {
			faults++
			if !rows[name] {
				t.Errorf("%s has no row in docs/RELIABILITY.md", name)
			}
		}
	}
	for name := range rows {
		if !tests[name] {
			t.Errorf("docs/RELIABILITY.md names %s, which does not exist", name)
		}
	}
	if faults < 25 {
		t.Errorf("%d fault rows, want at least 25", faults)
	}
	t.Logf("%d fault tests, %d tests named in the document", faults, len(rows))
}

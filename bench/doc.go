// Package bench holds the module's Go benchmarks (go test -bench . ./bench/,
// make bench-go) and, in bench/harness, the side-by-side harness against
// libiscsi (bench/README.md). It exports nothing: what the benchmarks and
// the harness share is in bench/internal/benchkit.
package bench

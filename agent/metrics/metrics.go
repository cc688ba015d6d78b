// Package metrics is the agent's Prometheus instrumentation: sessions by
// state, logins, logout outcomes by HRESULT, the TCP bytes of the sessions'
// connections, login and logout latency histograms, and reconnects.
//
// Nothing here sits on the I/O path: counters move once per login or
// logout, and the per-session figures are read from a snapshot when
// Prometheus scrapes.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is what the agent holds at a scrape.
type Snapshot struct {
	// SessionsByState counts sessions by api.Session.State.
	SessionsByState map[string]int
	// BytesSent and BytesReceived add up the TCP byte counts of the
	// connections of the sessions held now; Measured is false where the
	// platform gives none.
	BytesSent, BytesReceived uint64
	Measured                 bool
}

// States are the session states always exported, 0 when no session is in
// them, so that a dashboard sees a series before the first session (and an
// alert on "recovering" or "failed" has one to watch).
var States = []string{"logged in", "logging out", "recovering", "failed", "lost"}

// Metrics are the agent's collectors on a registry of their own.
type Metrics struct {
	reg *prometheus.Registry

	logins        *prometheus.CounterVec
	loginSeconds  prometheus.Histogram
	logouts       *prometheus.CounterVec
	logoutSeconds *prometheus.HistogramVec
	reconnects    prometheus.Counter
}

// latencyBuckets span 1 ms to about 65 s: a login on a LAN takes
// milliseconds, a logout waiting for a stalled target its whole timeout.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 17)

// New returns the metrics; snapshot is called at each scrape.
func New(snapshot func() Snapshot) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.logins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "iscsictl_logins_total",
		Help: "Session logins the agent attempted, by result (ok, failed).",
	}, []string{"result"})
	m.loginSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "iscsictl_login_duration_seconds",
		Help:    "Time to log one session in (all its connections), successful or not.",
		Buckets: latencyBuckets,
	})
	m.logouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "iscsictl_logouts_total",
		Help: "Logout operations by outcome and VDS HRESULT, and by scope: target (LogoutFromTarget), session (one session), shutdown (the agent stopping).",
	}, []string{"scope", "outcome", "hresult"})
	m.logoutSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "iscsictl_logout_duration_seconds",
		Help:    "Time of logout operations, by scope.",
		Buckets: latencyBuckets,
	}, []string{"scope"})
	m.reconnects = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "iscsictl_reconnects_total",
		Help: "Sessions re-established after a connection was lost. Always 0: the initiator does not recover sessions yet.",
	})
	for _, r := range []string{"ok", "failed"} {
		m.logins.WithLabelValues(r)
	}
	m.reg.MustRegister(m.logins, m.loginSeconds, m.logouts, m.logoutSeconds, m.reconnects,
		&snapshotCollector{snapshot: snapshot},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry returns the registry, for tests to gather.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Login counts one session login that took d.
func (m *Metrics) Login(ok bool, d time.Duration) {
	r := "ok"
	if !ok {
		r = "failed"
	}
	m.logins.WithLabelValues(r).Inc()
	m.loginSeconds.Observe(d.Seconds())
}

// Logout counts one logout operation.
func (m *Metrics) Logout(scope, outcome, hresult string, d time.Duration) {
	m.logouts.WithLabelValues(scope, outcome, hresult).Inc()
	m.logoutSeconds.WithLabelValues(scope).Observe(d.Seconds())
}

var (
	descSessions = prometheus.NewDesc("iscsictl_sessions",
		"Sessions the agent holds, by state.", []string{"state"}, nil)
	descBytes = prometheus.NewDesc("iscsictl_session_tcp_bytes",
		"TCP bytes of the connections of the sessions held now (sent: acknowledged by the target; received), from the kernel's TCP_INFO. A gauge: it drops when a session ends. Absent where the platform gives no count.",
		[]string{"direction"}, nil)
)

// snapshotCollector exports a Snapshot taken at scrape time.
type snapshotCollector struct {
	snapshot func() Snapshot
}

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSessions
	ch <- descBytes
}

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	seen := map[string]bool{}
	for _, st := range States {
		seen[st] = true
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(s.SessionsByState[st]), st)
	}
	for st, n := range s.SessionsByState {
		if !seen[st] {
			ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(n), st)
		}
	}
	if s.Measured {
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(s.BytesSent), "sent")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(s.BytesReceived), "received")
	}
}

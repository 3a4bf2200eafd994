package nmi

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// latencyBuckets resolve sub-millisecond cached answers as well as multi-second waits.
var latencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// Metrics are NMI's Prometheus metrics. Upstream names are kept where they exist; labels are
// bounded (route names, status codes, namespaces; never raw paths or caller-supplied resources).
type Metrics struct {
	operations     *prometheus.HistogramVec
	imdsDuration   *prometheus.HistogramVec
	imdsErrors     *prometheus.CounterVec
	kubeErrors     *prometheus.CounterVec
	cacheHits      prometheus.Counter
	cacheMisses    prometheus.Counter
	cacheRefreshes *prometheus.CounterVec
	cacheEntries   prometheus.Gauge
	prefetches     *prometheus.CounterVec
	rateLimited    prometheus.Counter
	// proxyRefused counts requests the IMDS proxy refused, by reason (a bounded set).
	proxyRefused *prometheus.CounterVec
	// viewNotCurrent counts grants not served because the view was catching up and could not be
	// confirmed, by kind not current; viewConfirmations every confirmation, by result.
	viewNotCurrent    *prometheus.CounterVec
	viewConfirmations *prometheus.CounterVec

	// statusText avoids formatting the status code on every request.
	statusText map[int]string
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns = "aadpodidentity"
	m := &Metrics{
		operations: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "nmi_operations_duration_seconds",
			Help: "Duration of NMI's answers, by route, status code and pod namespace.", Buckets: latencyBuckets},
			[]string{"operation_type", "status_code", "namespace"}),
		imdsDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "imds_operations_duration_seconds",
			Help: "Duration of token fetches from IMDS and Azure AD.", Buckets: latencyBuckets}, []string{"operation_type"}),
		imdsErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "imds_operations_errors_count",
			Help: "Failed token fetches from IMDS and Azure AD."}, []string{"operation_type"}),
		kubeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "kubernetes_api_operations_errors_count",
			Help: "Failed Kubernetes API operations."}, []string{"operation_type"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "nmi_token_cache_hits_total",
			Help: "Token requests answered from the cache."}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "nmi_token_cache_misses_total",
			Help: "Token requests that had to fetch from Azure."}),
		cacheRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nmi_token_cache_refreshes_total",
			Help: "Background refreshes of cached tokens, by result."}, []string{"result"}),
		cacheEntries: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "nmi_token_cache_entries",
			Help: "Entries in the token cache."}),
		prefetches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nmi_token_prefetches_total",
			Help: "Token prefetches after an assignment, by result."}, []string{"result"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "nmi_rate_limited_total",
			Help: "Token requests refused with 429 by the per-pod rate limit."}),
		proxyRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nmi_imds_proxy_refused_total",
			Help: "Requests NMI's IMDS proxy refused, by reason."}, []string{"reason"}),
		viewNotCurrent: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nmi_view_not_current_total",
			Help: "Grants answered 503 because a watch was catching up and the API server did not confirm them, by kind not current."}, []string{"kind"}),
		viewConfirmations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nmi_view_confirmations_total",
			Help: "Grants re-read from the API server before serving while a watch was catching up, by result."}, []string{"result"}),
		statusText: map[int]string{},
	}
	for _, c := range []int{200, 400, 403, 404, 405, 429, 500, 502, 503} {
		m.statusText[c] = strconv.Itoa(c)
	}
	if reg != nil {
		reg.MustRegister(m.operations, m.imdsDuration, m.imdsErrors, m.kubeErrors, m.cacheHits, m.cacheMisses,
			m.cacheRefreshes, m.cacheEntries, m.prefetches, m.rateLimited)
		reg.MustRegister(m.proxyRefused, m.viewNotCurrent, m.viewConfirmations)
	}
	return m
}

func (m *Metrics) status(code int) string {
	if s, ok := m.statusText[code]; ok {
		return s
	}
	return strconv.Itoa(code)
}

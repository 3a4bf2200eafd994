package mic

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podidentity/podidentity/internal/cloud"
)

// Metrics keeps upstream names (prefix aadpodidentity_) where upstream had the metric, and adds
// assignment latency, quarantine size and ARM calls by result. Labels are bounded sets.
type Metrics struct {
	CycleDuration   prometheus.Histogram
	CycleCount      prometheus.Counter
	NewLeader       prometheus.Counter
	CloudDuration   *prometheus.HistogramVec
	CloudErrors     *prometheus.CounterVec
	ARMCalls        *prometheus.CounterVec
	KubeErrors      *prometheus.CounterVec
	AddDuration     prometheus.Histogram
	AddCount        prometheus.Counter
	DelDuration     prometheus.Histogram
	DelCount        prometheus.Counter
	UpdDuration     prometheus.Histogram
	UpdCount        prometheus.Counter
	AssignLatency   prometheus.Histogram
	Quarantined     prometheus.Gauge
	ResourcesQueued prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	kube := []float64{0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10}
	m := &Metrics{
		CycleDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "aadpodidentity_mic_cycle_duration_seconds",
			Help: "Duration of one MIC planning pass (desired state computed and dirty VMs/VMSS queued).", Buckets: []float64{0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60}}),
		CycleCount: prometheus.NewCounter(prometheus.CounterOpts{Name: "aadpodidentity_mic_cycle_count", Help: "Number of MIC planning passes."}),
		NewLeader:  prometheus.NewCounter(prometheus.CounterOpts{Name: "aadpodidentity_mic_new_leader_election_count", Help: "Times this replica became leader."}),
		CloudDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "aadpodidentity_cloud_provider_operations_duration_seconds",
			Help: "Duration of ARM calls, including waiting for the long-running operation.", Buckets: []float64{0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200}},
			[]string{"operation_type"}),
		CloudErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aadpodidentity_cloud_provider_operations_errors_count", Help: "Failed ARM calls."},
			[]string{"operation_type"}),
		ARMCalls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aadpodidentity_mic_arm_calls_total", Help: "ARM calls by operation and result (ok, throttled, not_found, conflict, identity_refused, error)."},
			[]string{"operation_type", "result"}),
		KubeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aadpodidentity_kubernetes_api_operations_errors_count", Help: "Failed Kubernetes API writes."},
			[]string{"operation_type"}),
		AddDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "aadpodidentity_assigned_identity_addition_duration_seconds", Help: "AzureAssignedIdentity create latency.", Buckets: kube}),
		AddCount:    prometheus.NewCounter(prometheus.CounterOpts{Name: "aadpodidentity_assigned_identity_addition_count", Help: "AzureAssignedIdentities created."}),
		DelDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "aadpodidentity_assigned_identity_deletion_duration_seconds", Help: "AzureAssignedIdentity delete latency.", Buckets: kube}),
		DelCount:    prometheus.NewCounter(prometheus.CounterOpts{Name: "aadpodidentity_assigned_identity_deletion_count", Help: "AzureAssignedIdentities deleted."}),
		UpdDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "aadpodidentity_assigned_identity_update_duration_seconds", Help: "AzureAssignedIdentity update latency.", Buckets: kube}),
		UpdCount:    prometheus.NewCounter(prometheus.CounterOpts{Name: "aadpodidentity_assigned_identity_update_count", Help: "AzureAssignedIdentities updated."}),
		AssignLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "aadpodidentity_mic_assignment_latency_seconds",
			Help: "Time from MIC first seeing a pod's (pod, identity) pair to its AzureAssignedIdentity being Assigned.", Buckets: []float64{0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600}}),
		Quarantined:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "aadpodidentity_mic_quarantined_identities", Help: "(VM/VMSS, identity) pairs held back after ARM refused the identity."}),
		ResourcesQueued: prometheus.NewGauge(prometheus.GaugeOpts{Name: "aadpodidentity_mic_dirty_resources", Help: "VMs/VMSS waiting to be reconciled."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.CycleDuration, m.CycleCount, m.NewLeader, m.CloudDuration, m.CloudErrors, m.ARMCalls, m.KubeErrors,
			m.AddDuration, m.AddCount, m.DelDuration, m.DelCount, m.UpdDuration, m.UpdCount, m.AssignLatency, m.Quarantined, m.ResourcesQueued} {
			// A second manager in the same process (after a lost lease) registers again: reuse.
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if !errors.As(err, &are) {
					panic(err)
				}
			}
		}
	}
	return m
}

// ObserveARM records one ARM call (armcloud.Options.Observe).
func (m *Metrics) ObserveARM(op string, d time.Duration, err error) {
	m.CloudDuration.WithLabelValues(op).Observe(d.Seconds())
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, cloud.ErrThrottled):
		result = "throttled"
	case errors.Is(err, cloud.ErrNotFound):
		result = "not_found"
	case errors.Is(err, cloud.ErrConflict):
		result = "conflict"
	case errors.Is(err, cloud.ErrIdentity):
		result = "identity_refused"
	default:
		result = "error"
	}
	if err != nil {
		m.CloudErrors.WithLabelValues(op).Inc()
	}
	m.ARMCalls.WithLabelValues(op, result).Inc()
}

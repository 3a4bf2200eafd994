package mic

import (
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// notifier tells people what MIC did and why it could not: Kubernetes events on pods, bindings,
// identities and nodes, each distinct problem once while it lasts, and the assignment latency.
type notifier struct {
	log   logr.Logger
	rec   events.EventRecorder
	m     *Metrics
	seen  *reported
	clock *assignClock
}

func newNotifier(log logr.Logger, rec events.EventRecorder, m *Metrics) *notifier {
	return &notifier{log: log, rec: rec, m: m, seen: newReported(), clock: newAssignClock()}
}

// pass takes in a new desired state computed at now: problems not reported yet are reported,
// the latency clock starts for new pairs, and what is gone is forgotten.
func (n *notifier) pass(st *desired.State, now time.Time) {
	n.clock.observe(st.AAIs, now)
	n.seen.retain(st)
	for _, p := range st.Problems {
		if !n.seen.firstProblem(p) {
			continue
		}
		n.log.Info("bad input: "+p.Message, "kind", p.ObjectKind, "object", p.Object.String(), "problem", p.Kind)
		if obj := refObject(p.ObjectKind, p.Object, ""); obj != nil {
			n.rec.Eventf(obj, nil, corev1.EventTypeWarning, string(p.Kind), "Validate", "%s", p.Message)
		}
	}
}

// failed puts a Warning on a's pod and binding, once per distinct message.
func (n *notifier) failed(a *desired.AAI, podUID types.UID, msg string) {
	if !n.seen.firstFailure(a.Key, msg) {
		return
	}
	n.log.Info(msg, "pod", podKey(a).String(), "identity", a.Identity.Namespace+"/"+a.Identity.Name)
	n.rec.Eventf(refObject("Pod", podKey(a), podUID), nil, corev1.EventTypeWarning, "AssignmentFailed", "Assign",
		"identity %s/%s: %s", a.Identity.Namespace, a.Identity.Name, msg)
	n.rec.Eventf(a.Binding, nil, corev1.EventTypeWarning, "AssignmentFailed", "Assign", "pod %s/%s, identity %s: %s",
		a.PodNamespace, a.PodName, a.Identity.Name, msg)
}

// failedAll puts a Warning on every binding the AAIs use (a whole VM/VMSS failed).
func (n *notifier) failedAll(aais []*desired.AAI, msg string) {
	seen := map[types.NamespacedName]bool{}
	for _, a := range aais {
		k := types.NamespacedName{Namespace: a.Binding.Namespace, Name: a.Binding.Name}
		if !seen[k] {
			seen[k] = true
			n.rec.Eventf(a.Binding, nil, corev1.EventTypeWarning, "AssignmentFailed", "Assign", "%s", msg)
		}
	}
}

// assigned records that a's pod got its identity: the latency and a Normal event on the pod
// (the binding's event comes from the run's assignTally).
func (n *notifier) assigned(a *desired.AAI, podUID types.UID) {
	if d, ok := n.clock.stop(a.Key); ok {
		n.m.AssignLatency.Observe(d.Seconds())
	}
	n.rec.Eventf(refObject("Pod", podKey(a), podUID), nil, corev1.EventTypeNormal, "IdentityAssigned", "Assign",
		"identity %s/%s assigned", a.Identity.Namespace, a.Identity.Name)
}

// assignedOn puts one Normal event per binding for the pods a run assigned on where.
func (n *notifier) assignedOn(t *assignTally, where string) { t.report(n.rec, where) }

func podKey(a *desired.AAI) types.NamespacedName {
	return types.NamespacedName{Namespace: a.PodNamespace, Name: a.PodName}
}

// refObject builds a minimal object of a kind for event references.
func refObject(kind string, k types.NamespacedName, uid types.UID) runtime.Object {
	meta := func(o client.Object) client.Object {
		o.SetNamespace(k.Namespace)
		o.SetName(k.Name)
		o.SetUID(uid)
		return o
	}
	switch kind {
	case "Pod":
		return meta(&corev1.Pod{})
	case "Node":
		return meta(&corev1.Node{})
	case "AzureIdentity":
		return meta(&aadv1.AzureIdentity{})
	case "AzureIdentityBinding":
		return meta(&aadv1.AzureIdentityBinding{})
	}
	return nil
}

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// The workload's namespaces and Azure identities (added to the emulated world).
const (
	nsA, nsB    = "chaos-a", "chaos-b"
	fedSA       = "fed-sa"
	azStdA      = "chaos-std-a"
	azStdB      = "chaos-std-b"
	azStdNS     = "chaos-std-ns" // its AzureIdentity is namespaced
	azFederated = "chaos-fed"
	maxBarePods = 12
)

// chaosWorld adds the workload's identities to the emulated world.
func chaosWorld(c *emulator.Config) {
	for _, n := range []string{azStdA, azStdB, azStdNS, azFederated} {
		c.UserAssignedIdentities = append(c.UserAssignedIdentities, emulator.IdentityConfig{Name: n})
	}
	chaosPrincipal(c)
}

// workload churns pods, labels, Deployments and bindings from its own random stream.
type workload struct {
	sb       *sandbox.Sandbox
	c        client.Client // reads
	wr       *writer       // writes, fed to the checker
	rnd      *rand.Rand
	bindings map[string]*aadv1.AzureIdentityBinding // by namespace/name, the full set it toggles
	clientID []string                               // client IDs pods may name in AZURE_CLIENT_ID
	seq      int
	// stdBTarget is the Azure identity std-b named when identity-delete deleted it (re-created
	// with that identity's client ID as Azure has it then).
	stdBTarget string

	mu      sync.Mutex
	actions map[string]int
}

// actionKinds are the workload's action kinds: each appears in the report's counts, 0 when the
// run never drew it.
var actionKinds = []string{"scale", "pod-create", "pod-delete", "relabel", "binding-create", "binding-delete",
	"job-create", "identity-switch", "identity-namespaced-toggle", "ip-reuse", "identity-delete", "identity-create"}

func newWorkload(sb *sandbox.Sandbox, c client.Client, w *watcher, seed uint64) *workload {
	actions := map[string]int{}
	for _, k := range actionKinds {
		actions[k] = 0
	}
	return &workload{sb: sb, c: c, wr: &writer{c: c, w: w}, rnd: rand.New(rand.NewPCG(seed+1, seed^0x5bd1e995)), bindings: map[string]*aadv1.AzureIdentityBinding{}, actions: actions}
}

func (w *workload) count(action string) {
	w.mu.Lock()
	w.actions[action]++
	w.mu.Unlock()
}

// Actions returns the churn actions done, by kind.
func (w *workload) Actions() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for k, v := range w.actions {
		out[k] = v
	}
	return out
}

func binding(ns, name, identity, selector, sa string) *aadv1.AzureIdentityBinding {
	return &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector, ServiceAccountName: sa}}
}

// setup creates the namespaces, the federated credential, identities (standard, namespaced and
// federated), every binding and the Deployments.
func (w *workload) setup(ctx context.Context) error {
	for _, ns := range []string{nsA, nsB} {
		if err := w.create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	if err := w.create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: nsA, Name: fedSA}}); err != nil {
		return err
	}
	if err := w.sb.Emulator.AddFederatedCredential(azFederated, emulator.FederatedCredentialConfig{
		Name: "chaos", Issuer: w.sb.Issuer, Subject: sandbox.FederatedSubject(nsA, fedSA)}); err != nil {
		return fmt.Errorf("adding the federated credential of %s: %w", azFederated, err)
	}
	var ids []client.Object
	for _, s := range []struct{ ns, name, az string }{{nsA, "std-a", azStdA}, {nsB, "std-b", azStdB}, {nsA, "std-ns", azStdNS}} {
		id, err := w.sb.IdentityObject(s.ns, s.name, s.az)
		if err != nil {
			return err
		}
		if s.az == azStdNS {
			id.Annotations = map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}
		}
		ids = append(ids, id)
		w.clientID = append(w.clientID, id.Spec.ClientID)
	}
	fed, err := w.sb.FederatedIdentityObject(nsA, "fed", azFederated)
	if err != nil {
		return err
	}
	ids = append(ids, fed)
	w.clientID = append(w.clientID, fed.Spec.ClientID)
	for _, b := range []*aadv1.AzureIdentityBinding{
		binding(nsA, "bind-a", "std-a", "sel-a", ""),
		binding(nsA, "bind-ns", "std-ns", "sel-ns", ""),
		binding(nsA, "bind-fed", "fed", "", fedSA),
		binding(nsB, "bind-b", "std-b", "sel-b", ""),
	} {
		w.bindings[b.Namespace+"/"+b.Name] = b
		ids = append(ids, b.DeepCopy())
	}
	more, err := w.setupKinds(ctx)
	if err != nil {
		return err
	}
	ids = append(ids, more...)
	for _, d := range []struct{ ns, name, sel, sa string }{
		{nsA, "dep-a", "sel-a", ""}, {nsB, "dep-b", "sel-b", ""}, {nsA, "dep-fed", "", fedSA},
		{nsA, "dep-sp", "sel-sp", ""},     // the service-principal identity
		{nsB, "dep-cross", "sel-a", ""},   // bound across namespaces (non-namespaced identity)
		{nsB, "dep-nsdeny", "sel-ns", ""}, // namespaced identity from another namespace: never bound
	} {
		ids = append(ids, deployment(d.ns, d.name, d.sel, d.sa))
	}
	for _, o := range ids {
		if err := w.create(ctx, o); err != nil {
			return err
		}
	}
	return nil
}

func (w *workload) create(ctx context.Context, o client.Object) error {
	if err := w.wr.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating %T %s/%s: %w", o, o.GetNamespace(), o.GetName(), err)
	}
	return nil
}

func podSpec(sa, clientID string) corev1.PodSpec {
	c := corev1.Container{Name: "app", Image: "chaos/app"} // an SDK application refreshing its token
	if clientID != "" {
		c.Env = []corev1.EnvVar{{Name: "AZURE_CLIENT_ID", Value: clientID}}
	}
	return corev1.PodSpec{ServiceAccountName: sa, TerminationGracePeriodSeconds: ptr.To(int64(1)), Containers: []corev1.Container{c}}
}

func deployment(ns, name, sel, sa string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	tl := map[string]string{"app": name}
	if sel != "" {
		tl[aadv1.PodLabelKey] = sel
	}
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: tl}, Spec: podSpec(sa, "")}}}
}

var (
	selectors   = []string{"sel-a", "sel-b", "sel-ns", "sel-sp", "", "nomatch"}
	deployments = []string{nsA + "/dep-a", nsB + "/dep-b", nsA + "/dep-fed", nsB + "/dep-cross", nsB + "/dep-nsdeny", nsA + "/dep-sp"}
)

// run does one churn action every period until ctx ends.
func (w *workload) run(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		action, err := w.step(ctx)
		if err != nil && ctx.Err() == nil {
			// Churn errors are expected while faults hit the control plane; they are not invariants.
			klog.V(2).InfoS("churn action failed", "action", action, "err", err)
			w.count(action + "-error")
			continue
		}
		w.count(action)
	}
}

func (w *workload) step(ctx context.Context) (string, error) {
	switch n := w.rnd.IntN(16); {
	case n < 2:
		d := deployments[w.rnd.IntN(len(deployments))]
		var dep appsv1.Deployment
		ns, name := splitKey(d)
		if err := w.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &dep); err != nil {
			return "scale", err
		}
		dep.Spec.Replicas = ptr.To(int32(w.rnd.IntN(4)))
		return "scale", w.wr.Update(ctx, &dep)
	case n < 5:
		pods, err := w.pods(ctx, true)
		if err != nil || len(pods) >= maxBarePods {
			return "pod-create", err
		}
		w.seq++
		ns, sa, cid := nsA, "", ""
		if w.rnd.IntN(2) == 0 {
			ns = nsB
		} else if w.rnd.IntN(3) == 0 {
			sa = fedSA
		}
		if w.rnd.IntN(3) == 0 { // names an identity explicitly, bound to it or not
			cid = w.clientID[w.rnd.IntN(len(w.clientID))]
		}
		labels := map[string]string{"chaos": "bare"}
		if sel := selectors[w.rnd.IntN(len(selectors))]; sel != "" {
			labels[aadv1.PodLabelKey] = sel
		}
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bare-" + strconv.Itoa(w.seq), Labels: labels}, Spec: podSpec(sa, cid)}
		return "pod-create", w.wr.Create(ctx, p)
	case n < 7:
		pods, err := w.pods(ctx, false)
		if err != nil || len(pods) == 0 {
			return "pod-delete", err
		}
		p := pods[w.rnd.IntN(len(pods))]
		return "pod-delete", client.IgnoreNotFound(w.wr.Delete(ctx, &p))
	case n < 10:
		pods, err := w.pods(ctx, false)
		if err != nil || len(pods) == 0 {
			return "relabel", err
		}
		p := pods[w.rnd.IntN(len(pods))]
		patch := client.MergeFrom(p.DeepCopy())
		if sel := selectors[w.rnd.IntN(len(selectors))]; sel != "" {
			p.Labels[aadv1.PodLabelKey] = sel
		} else {
			delete(p.Labels, aadv1.PodLabelKey)
		}
		return "relabel", client.IgnoreNotFound(w.wr.Patch(ctx, &p, patch))
	case n == 10:
		return w.toggleIdentity(ctx)
	case n == 11:
		return "job-create", w.createJob(ctx)
	case n == 12:
		return "identity-switch", w.switchIdentity(ctx)
	case n == 13:
		return "identity-namespaced-toggle", w.toggleNamespaced(ctx)
	case n == 14:
		return "ip-reuse", w.reuseIP(ctx)
	default:
		keys := []string{nsA + "/bind-a", nsA + "/bind-ns", nsA + "/bind-fed", nsB + "/bind-b", nsA + "/bind-sp"}
		b := w.bindings[keys[w.rnd.IntN(len(keys))]]
		var have aadv1.AzureIdentityBinding
		err := w.c.Get(ctx, client.ObjectKeyFromObject(b), &have)
		if apierrors.IsNotFound(err) {
			return "binding-create", w.wr.Create(ctx, b.DeepCopy())
		}
		if err != nil {
			return "binding-delete", err
		}
		return "binding-delete", client.IgnoreNotFound(w.wr.Delete(ctx, &have))
	}
}

// pods lists the workload's pods (bare ones only when bare is set), skipping terminating ones.
func (w *workload) pods(ctx context.Context, bare bool) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for _, ns := range []string{nsA, nsB} {
		var l corev1.PodList
		opts := []client.ListOption{client.InNamespace(ns)}
		if bare {
			opts = append(opts, client.MatchingLabels{"chaos": "bare"})
		}
		if err := w.c.List(ctx, &l, opts...); err != nil {
			return nil, err
		}
		for _, p := range l.Items {
			if p.DeletionTimestamp == nil {
				if p.Labels == nil {
					p.Labels = map[string]string{}
				}
				out = append(out, p)
			}
		}
	}
	return out, nil
}

func splitKey(k string) (string, string) {
	ns, name, _ := strings.Cut(k, "/")
	return ns, name
}

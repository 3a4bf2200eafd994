package main

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/podidentity/podidentity/internal/chaos"
)

// The checker reads podidentity's objects as unstructured data through its own clients and
// informers, not through podidentity's API types or caches.
var (
	identityGVR = schema.GroupVersionResource{Group: "aadpodidentity.k8s.io", Version: "v1", Resource: "azureidentities"}
	bindingGVR  = schema.GroupVersionResource{Group: "aadpodidentity.k8s.io", Version: "v1", Resource: "azureidentitybindings"}
	aaiGVR      = schema.GroupVersionResource{Group: "aadpodidentity.k8s.io", Version: "v1", Resource: "azureassignedidentities"}
)

// watcher keeps the checker's world and its binding timeline up to date from watches and from
// the answers to the workload's writes (wrote, deleted), merged by resourceVersion (chaos.World).
type watcher struct {
	mu           sync.Mutex
	world        *chaos.World
	runningSince map[types.NamespacedName]time.Time
	tl           *chaos.Timeline
	dyn          dynamic.Interface
	kc           kubernetes.Interface
}

func newWatcher(dyn dynamic.Interface) *watcher {
	return &watcher{world: chaos.NewWorld(false), runningSince: map[types.NamespacedName]time.Time{}, tl: chaos.NewTimeline(), dyn: dyn}
}

// start runs the informers and returns once their caches are synced.
func (w *watcher) start(ctx context.Context, kc kubernetes.Interface) error {
	w.kc = kc
	kf := informers.NewSharedInformerFactory(kc, 0)
	pods := kf.Core().V1().Pods().Informer()
	if _, err := pods.AddEventHandler(w.handler(w.setPod)); err != nil {
		return err
	}
	df := dynamicinformer.NewDynamicSharedInformerFactory(w.dyn, 0)
	for gvr, set := range map[schema.GroupVersionResource]func(any, bool) bool{identityGVR: w.setIdentity, bindingGVR: w.setBinding} {
		if _, err := df.ForResource(gvr).Informer().AddEventHandler(w.handler(set)); err != nil {
			return err
		}
	}
	kf.Start(ctx.Done())
	df.Start(ctx.Done())
	for t, ok := range kf.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("the checker's %v watch did not sync", t)
		}
	}
	for gvr, ok := range df.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("the checker's %s watch did not sync: are the CRDs installed?", gvr.Resource)
		}
	}
	return nil
}

func (w *watcher) handler(set func(obj any, deleted bool) bool) cache.ResourceEventHandlerFuncs {
	apply := func(obj any, deleted bool) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj, deleted = t.Obj, true
		}
		w.mu.Lock()
		if set(obj, deleted) {
			w.tl.Observe(time.Now(), w.world)
		}
		w.mu.Unlock()
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { apply(obj, false) },
		UpdateFunc: func(_, obj any) { apply(obj, false) },
		DeleteFunc: func(obj any) { apply(obj, true) },
	}
}

// setPod applies a pod's state (from the watch or a write's answer) to the world; it reports
// whether the world changed.
func (w *watcher) setPod(obj any, deleted bool) bool {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return false
	}
	cp := podFromObject(p)
	if !w.world.ApplyPod(cp, chaos.ParseRV(p.ResourceVersion), deleted) {
		return false
	}
	if _, ok := w.runningSince[cp.Key]; cp.Running && !deleted && !ok {
		w.runningSince[cp.Key] = time.Now()
	} else if !cp.Running || deleted {
		delete(w.runningSince, cp.Key)
	}
	return true
}

// podFromObject is the checker's reading of a pod.
func podFromObject(p *corev1.Pod) chaos.Pod {
	k := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	// A terminating pod stays bound until it is gone: its containers may still ask for tokens.
	running := p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil
	var requested string
	for _, c := range p.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == "AZURE_CLIENT_ID" {
				requested = e.Value
			}
		}
	}
	return chaos.Pod{Key: k, UID: p.UID, Selector: p.Labels[chaos.PodLabel], ServiceAccount: sa, Node: p.Spec.NodeName, Running: running,
		Requested: requested, Changed: changed(p.CreationTimestamp, p.ManagedFields, `"f:labels"`)}
}

// changed is the apiserver's latest record of a change: the creation time, or a later
// managedFields time of an entry whose fields contain mark ("" matches every entry).
func changed(created metav1.Time, mf []metav1.ManagedFieldsEntry, mark string) time.Time {
	t := created.Time
	for _, e := range mf {
		if e.Time == nil || e.Subresource != "" || (mark != "" && (e.FieldsV1 == nil || !strings.Contains(e.FieldsV1.GetRawString(), mark))) {
			continue
		}
		if e.Time.After(t) {
			t = e.Time.Time
		}
	}
	return t
}

func key(u *unstructured.Unstructured) types.NamespacedName {
	return types.NamespacedName{Namespace: u.GetNamespace(), Name: u.GetName()}
}

func str(u *unstructured.Unstructured, path ...string) string {
	s, _, _ := unstructured.NestedString(u.Object, path...)
	return s
}

func (w *watcher) setIdentity(obj any, deleted bool) bool {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return false
	}
	_, fed, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "federation")
	id := chaos.Identity{Key: key(u), UID: u.GetUID(), ClientID: str(u, "spec", "clientID"), ResourceID: str(u, "spec", "resourceID"),
		Namespaced: u.GetAnnotations()["aadpodidentity.k8s.io/Behavior"] == "namespaced", Federated: fed,
		Changed: changed(u.GetCreationTimestamp(), u.GetManagedFields(), "")}
	return w.world.ApplyIdentity(id, chaos.ParseRV(u.GetResourceVersion()), deleted)
}

func (w *watcher) setBinding(obj any, deleted bool) bool {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return false
	}
	b := chaos.Binding{Key: key(u), UID: u.GetUID(), Identity: str(u, "spec", "azureIdentity"),
		Selector: str(u, "spec", "selector"), ServiceAccount: str(u, "spec", "serviceAccountName"),
		Changed: changed(u.GetCreationTimestamp(), u.GetManagedFields(), "")}
	return w.world.ApplyBinding(b, chaos.ParseRV(u.GetResourceVersion()), deleted)
}

// current reports whether the checker's view of the pod, the bindings and the identities matches
// a fresh read from the apiserver (same resourceVersions); why says what differs.
func (w *watcher) current(ctx context.Context, pod types.NamespacedName) (bool, string) {
	live, exists := int64(0), false
	p, err := w.kc.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	switch {
	case err == nil:
		live, exists = chaos.ParseRV(p.ResourceVersion), true
	case !apierrors.IsNotFound(err):
		return false, fmt.Sprintf("reading pod %s: %v", pod, err)
	}
	lists := map[chaos.Kind]map[types.NamespacedName]int64{}
	for kind, gvr := range map[chaos.Kind]schema.GroupVersionResource{chaos.KindBinding: bindingGVR, chaos.KindIdentity: identityGVR} {
		l, err := w.dyn.Resource(gvr).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, fmt.Sprintf("listing %s: %v", gvr.Resource, err)
		}
		m := map[types.NamespacedName]int64{}
		for i := range l.Items {
			m[key(&l.Items[i])] = chaos.ParseRV(l.Items[i].GetResourceVersion())
		}
		lists[kind] = m
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if have, ok := w.world.Versions(chaos.KindPod)[pod]; ok != exists || have != live {
		return false, fmt.Sprintf("pod %s: checker has resourceVersion %d (exists %t), apiserver %d (exists %t)", pod, have, ok, live, exists)
	}
	if !maps.Equal(lists[chaos.KindBinding], w.world.Versions(chaos.KindBinding)) || !maps.Equal(lists[chaos.KindIdentity], w.world.Versions(chaos.KindIdentity)) {
		return false, "the bindings or identities differ from the apiserver's"
	}
	return true, ""
}

// pod is the checker's current view of one pod.
func (w *watcher) pod(k types.NamespacedName) (chaos.Pod, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p, ok := w.world.Pods[k]
	return p, ok
}

// snapshot copies the world (and when each pod started running) for the final checks.
func (w *watcher) snapshot() (*chaos.World, map[types.NamespacedName]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := chaos.NewWorld(w.world.ForceNamespaced)
	for k, v := range w.world.Pods {
		c.Pods[k] = v
	}
	for k, v := range w.world.Bindings {
		c.Bindings[k] = v
	}
	for k, v := range w.world.Identities {
		c.Identities[k] = v
	}
	since := make(map[types.NamespacedName]time.Time, len(w.runningSince))
	for k, v := range w.runningSince {
		since[k] = v
	}
	return c, since
}

// assignments lists the AzureAssignedIdentities, marking those a Warning event explains.
func (w *watcher) assignments(ctx context.Context, kc kubernetes.Interface) ([]chaos.AssignedIdentity, error) {
	l, err := w.dyn.Resource(aaiGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing AzureAssignedIdentities: %w", err)
	}
	ev, err := kc.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing events: %w", err)
	}
	warned := map[types.NamespacedName]bool{}
	for _, e := range ev.Items {
		if e.Type == corev1.EventTypeWarning {
			warned[types.NamespacedName{Namespace: e.InvolvedObject.Namespace, Name: e.InvolvedObject.Name}] = true
		}
	}
	var out []chaos.AssignedIdentity
	for i := range l.Items {
		u := &l.Items[i]
		pod := types.NamespacedName{Namespace: str(u, "spec", "podNamespace"), Name: str(u, "spec", "pod")}
		out = append(out, chaos.AssignedIdentity{Key: key(u), Pod: pod, Status: str(u, "status", "status"),
			Finalizers: u.GetFinalizers(), Deleting: u.GetDeletionTimestamp() != nil, Explained: warned[key(u)] || warned[pod]})
	}
	return out, nil
}

// converged reports whether MIC has caught up with the checker's view: every
// AzureAssignedIdentity is Assigned and every running pod has an Assigned one for each identity
// it is bound to. When not, why says what is missing.
func (w *watcher) converged(ctx context.Context) (ok bool, why string, err error) {
	l, err := w.dyn.Resource(aaiGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, "", fmt.Errorf("listing AzureAssignedIdentities: %w", err)
	}
	type pair struct {
		pod types.NamespacedName
		cid string
	}
	have := map[pair]bool{}
	for i := range l.Items {
		u := &l.Items[i]
		pod := types.NamespacedName{Namespace: str(u, "spec", "podNamespace"), Name: str(u, "spec", "pod")}
		if s := str(u, "status", "status"); s != "Assigned" && s != "" {
			return false, fmt.Sprintf("%s for pod %s is %s", key(u), pod, s), nil
		}
		have[pair{pod, strings.ToLower(str(u, "spec", "azureIdentityRef", "spec", "clientID"))}] = true
	}
	world, _ := w.snapshot()
	for _, p := range world.Pods {
		if !p.Running {
			continue
		}
		for cid := range world.Bound(p) {
			if !have[pair{p.Key, cid}] {
				return false, fmt.Sprintf("running pod %s has no AzureAssignedIdentity for client ID %s", p.Key, cid), nil
			}
		}
	}
	return true, "", nil
}

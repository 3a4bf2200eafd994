package iptables

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/podidentity/podidentity/internal/testenv"
)

// The shutdown decision: only an uninstall removes the rules; everything else keeps them.
func TestRemoveOnShutdown(t *testing.T) {
	owner := &Owner{Namespace: "podidentity", Name: "nmi", UID: "u1", NamespaceReadable: true}
	dsGR := schema.GroupResource{Group: "apps", Resource: "daemonsets"}
	nsGR := schema.GroupResource{Resource: "namespaces"}
	ds := func(uid string, deleting bool) *appsv1.DaemonSet {
		d := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "nmi", UID: types.UID(uid)}}
		if deleting {
			d.DeletionTimestamp = ptr.To(metav1.Now())
		}
		return d
	}
	ns := func(deleting bool) *corev1.Namespace {
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "podidentity"}}
		if deleting {
			n.DeletionTimestamp = ptr.To(metav1.Now())
		}
		return n
	}
	for _, c := range []struct {
		name   string
		facts  ShutdownFacts
		remove bool
		why    string
	}{
		{"owner unknown (no POD_NAME, not a DaemonSet)", ShutdownFacts{}, false, "not known at start"},
		{"rolling update", ShutdownFacts{Owner: owner, DaemonSet: ds("u1", false), Namespace: ns(false)}, false, "in place"},
		{"DaemonSet gone", ShutdownFacts{Owner: owner, DaemonSetErr: apierrors.NewNotFound(dsGR, "nmi")}, true, "is gone"},
		{"DaemonSet being deleted", ShutdownFacts{Owner: owner, DaemonSet: ds("u1", true), Namespace: ns(false)}, true, "being deleted"},
		{"DaemonSet replaced", ShutdownFacts{Owner: owner, DaemonSet: ds("u2", false), Namespace: ns(true)}, false, "replaced"},
		{"RBAC removed", ShutdownFacts{Owner: owner, DaemonSetErr: apierrors.NewForbidden(dsGR, "nmi", errors.New("no"))}, true, "lost read access"},
		{"ServiceAccount removed", ShutdownFacts{Owner: owner, DaemonSetErr: apierrors.NewUnauthorized("token")}, true, "lost read access"},
		{"API outage", ShutdownFacts{Owner: owner, DaemonSetErr: errors.New("connection refused")}, false, "failed"},
		{"API timeout", ShutdownFacts{Owner: owner, DaemonSetErr: apierrors.NewServerTimeout(dsGR, "get", 1)}, false, "failed"},
		{"namespace being deleted", ShutdownFacts{Owner: owner, DaemonSet: ds("u1", false), Namespace: ns(true)}, true, "namespace podidentity is being deleted"},
		{"namespace gone", ShutdownFacts{Owner: owner, DaemonSet: ds("u1", false), NamespaceErr: apierrors.NewNotFound(nsGR, "podidentity")}, true, "namespace podidentity is gone"},
		{"namespace unreadable now", ShutdownFacts{Owner: owner, DaemonSet: ds("u1", false), NamespaceErr: apierrors.NewForbidden(nsGR, "podidentity", errors.New("no"))}, true, "lost read access to namespace"},
		{"namespace read fails", ShutdownFacts{Owner: owner, DaemonSet: ds("u1", false), NamespaceErr: errors.New("EOF")}, false, "in place"},
		{"namespace never readable", ShutdownFacts{Owner: &Owner{Namespace: "podidentity", Name: "nmi", UID: "u1"}, DaemonSet: ds("u1", false)}, false, "in place"},
	} {
		t.Run(c.name, func(t *testing.T) {
			remove, why := RemoveOnShutdown(c.facts)
			if remove != c.remove || !strings.Contains(why, c.why) {
				t.Errorf("got remove=%v (%s), want %v with %q", remove, why, c.remove, c.why)
			}
		})
	}
}

// The decision's inputs as NMI reads them from a real apiserver with RBAC, as NMI's
// ServiceAccount (impersonated) with the chart's grants: its pod, its DaemonSet, its namespace.
func TestShutdownFactsFromTheAPI(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	admin, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testenv.Context(t)
	decide := func(kc kubernetes.Interface, o *Owner) (bool, string) {
		return RemoveOnShutdown(ReadShutdownFacts(ctx, kc, o))
	}
	// RBAC changes reach the authorizer's cache shortly after the write: poll.
	eventually := func(what string, cond func() (bool, string)) {
		t.Helper()
		var last string
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			ok, s := cond()
			last = s
			return ok, nil
		}); err != nil {
			t.Fatalf("%s: last: %s", what, last)
		}
	}

	if _, err := ResolveOwner(ctx, admin, "", ""); !errors.Is(err, ErrNoPodIdentity) {
		t.Errorf("without POD_NAME/POD_NAMESPACE: %v, want ErrNoPodIdentity", err)
	}

	ns, kc := nmiNamespace(t, env, admin)
	var owner *Owner
	eventually("resolving the owner", func() (bool, string) {
		owner, err = ResolveOwner(ctx, kc, ns, "nmi-abcde")
		return err == nil, errString(err)
	})
	if owner.Name != "nmi" || !owner.NamespaceReadable {
		t.Fatalf("owner %+v", owner)
	}
	if remove, why := decide(kc, owner); remove {
		t.Fatalf("rolling update: removed (%s)", why)
	}

	// helm uninstall deletes the RoleBinding alongside the DaemonSet, often before SIGTERM.
	if err := admin.RbacV1().RoleBindings(ns).Delete(ctx, "nmi", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("removal once the DaemonSet read is forbidden", func() (bool, string) {
		remove, why := decide(kc, owner)
		return remove && strings.Contains(why, "lost read access"), why
	})
	grantDaemonSetRead(t, admin, ns)
	eventually("keeping once the grant is back", func() (bool, string) {
		remove, why := decide(kc, owner)
		return !remove, why
	})

	// Foreground deletion: the DaemonSet stays with a deletionTimestamp while its pods go (no
	// garbage collector runs here, so it stays until the finalizer is removed).
	if err := admin.AppsV1().DaemonSets(ns).Delete(ctx, "nmi", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground)}); err != nil {
		t.Fatal(err)
	}
	if remove, why := decide(kc, owner); !remove || !strings.Contains(why, "being deleted") {
		t.Errorf("DaemonSet being deleted: remove=%v (%s)", remove, why)
	}
	ds, err := admin.AppsV1().DaemonSets(ns).Get(ctx, "nmi", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ds.Finalizers = nil
	if _, err := admin.AppsV1().DaemonSets(ns).Update(ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("removal once the DaemonSet is gone", func() (bool, string) {
		remove, why := decide(kc, owner)
		return remove && strings.Contains(why, "is gone"), why
	})
	// A reinstall under the same name: its pods take the rules over, so keep them.
	createDaemonSet(t, admin, ns)
	if remove, why := decide(kc, owner); remove || !strings.Contains(why, "replaced") {
		t.Errorf("DaemonSet replaced: remove=%v (%s)", remove, why)
	}

	// kubectl delete namespace: pods may be deleted before the DaemonSet.
	ns2, kc2 := nmiNamespace(t, env, admin)
	var owner2 *Owner
	eventually("resolving the second owner", func() (bool, string) {
		owner2, err = ResolveOwner(ctx, kc2, ns2, "nmi-abcde")
		return err == nil, errString(err)
	})
	if err := admin.CoreV1().Namespaces().Delete(ctx, ns2, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if remove, why := decide(kc2, owner2); !remove || !strings.Contains(why, "namespace "+ns2+" is being deleted") {
		t.Errorf("namespace being deleted: remove=%v (%s)", remove, why)
	}

	// A pod not run by a DaemonSet cannot prove an uninstall.
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bare", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "nmi", Image: "nmi"}}}}
	if _, err := admin.CoreV1().Pods(ns).Create(ctx, bare, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveOwner(ctx, kc, ns, "bare"); err == nil || !strings.Contains(err.Error(), "not controlled by a DaemonSet") {
		t.Errorf("bare pod: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// nmiNamespace makes a namespace with NMI's DaemonSet, a pod it controls and the chart's grants
// to ServiceAccount "nmi", and returns a client acting as that ServiceAccount.
func nmiNamespace(t *testing.T, env *testenv.Env, admin kubernetes.Interface) (string, kubernetes.Interface) {
	t.Helper()
	ctx := testenv.Context(t)
	ns := env.Namespace(t)
	ds := createDaemonSet(t, admin, ns)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "nmi-abcde", Namespace: ns,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "nmi", Image: "nmi"}}}}
	if _, err := admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := "system:serviceaccount:" + ns + ":nmi"
	cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "nmi-" + ns}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get"}, ResourceNames: []string{ns}},
	}}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "nmi-" + ns},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: cr.Name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "nmi", Namespace: ns}}}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "nmi", Namespace: ns}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}, ResourceNames: []string{"nmi"}},
	}}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grantDaemonSetRead(t, admin, ns)
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: sa, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ns, kc
}

func grantDaemonSetRead(t *testing.T, admin kubernetes.Interface, ns string) {
	t.Helper()
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "nmi", Namespace: ns},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "nmi"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "nmi", Namespace: ns}}}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(testenv.Context(t), rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createDaemonSet(t *testing.T, admin kubernetes.Interface, ns string) *appsv1.DaemonSet {
	t.Helper()
	labels := map[string]string{"app": "nmi"}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "nmi", Namespace: ns},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "nmi", Image: "nmi"}}}}}}
	got, err := admin.AppsV1().DaemonSets(ns).Create(testenv.Context(t), ds, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

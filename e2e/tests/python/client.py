"""An independent client against the dev cluster: the official Python `kubernetes` package lists,
watches, creates, patches and deletes. Run by the `python_client` conformance test with the path of
a kubeconfig; exits non-zero with a message on any mismatch."""

import sys
import threading

from kubernetes import client, config, watch


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()

    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert "default" in names, names

    start = core.list_namespaced_config_map("default").metadata.resource_version
    seen = []

    def watch_events():
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_config_map,
            "default",
            resource_version=start,
            timeout_seconds=10,
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=watch_events)
    watcher.start()

    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="from-python", labels={"app": "py"}),
        data={"k": "1"},
    )
    created = core.create_namespaced_config_map("default", body)
    assert created.metadata.uid, created

    try:
        core.create_namespaced_config_map("default", body)
        raise AssertionError("a duplicate create succeeded")
    except client.ApiException as e:
        assert e.status == 409, e

    patched = core.patch_namespaced_config_map("from-python", "default", {"data": {"k": "2"}})
    assert patched.data["k"] == "2", patched.data

    selected = core.list_namespaced_config_map("default", label_selector="app=py").items
    assert [c.metadata.name for c in selected] == ["from-python"], selected
    assert core.list_namespaced_config_map("default", label_selector="app=other").items == []

    core.delete_namespaced_config_map("from-python", "default")
    watcher.join(15)
    assert seen == [
        ("ADDED", "from-python"),
        ("MODIFIED", "from-python"),
        ("DELETED", "from-python"),
    ], seen
    print("python client: ok")


if __name__ == "__main__":
    main(sys.argv[1])

"""Domain XML: what is read from it, and what the target rewrite changes (and does not)."""

import xml.etree.ElementTree as ET

import pytest

from ferry.agent.domxml import backing_formats, parse_disks, parse_domain, parse_nics, rewrite_for_target
from ferry.errors import InvalidArgument
from ferry.model import Disk, DiskPlan, HostMapping, Nic

GUEST = """<domain type='qemu' xmlns:app='http://example.org/app/1'>
  <name>web1</name>
  <uuid>6f1c1c1e-7d7a-4c1e-9a57-2d6b2b0e0a01</uuid>
  <metadata><app:owner team='web'/></metadata>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/boot/vmlinuz-guest</kernel>
    <initrd>/var/lib/libvirt/boot/initrd.img</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <backingStore type='file'>
        <format type='raw'/>
        <source file='/var/lib/libvirt/images/base/debian.raw'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/shared/web1-data.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web1-swap'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br-guest'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:12:34:57'/>
      <source network='default'/>
      <model type='e1000'/>
    </interface>
    <serial type='file'>
      <source path='/shared/console/web1.log' append='on'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>"""


def test_parse_domain():
    d = parse_domain(GUEST)
    assert (d.name, d.uuid, d.domain_type) == ("web1", "6f1c1c1e-7d7a-4c1e-9a57-2d6b2b0e0a01", "qemu")
    assert d.memory_bytes == 256 << 20
    assert d.vcpus == 1  # the current count, not the maximum
    assert (d.cpu_mode, d.cpu_model) == ("custom", "qemu64")


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("<memory>1024</memory>", 1 << 20),  # bare number is KiB
        ("<memory unit='MiB'>256</memory>", 256 << 20),
        ("<memory unit='G'>2</memory>", 2 << 30),
        ("<memory unit='MB'>1</memory>", 1_000_000),
        ("<memory unit='bytes'>4096</memory>", 4096),
        ("", 0),
    ],
)
def test_memory_units(memory, expected):
    assert parse_domain(f"<domain type='kvm'><name>g</name>{memory}</domain>").memory_bytes == expected


def test_cpu_mode_absent_and_host_model():
    assert parse_domain("<domain><name>g</name></domain>").cpu_mode == ""
    assert parse_domain("<domain><name>g</name><cpu mode='host-model'/></domain>").cpu_mode == "host-model"


def test_machine_type():
    """<os><type machine>: what the coordinator checks against the target's machine types."""
    assert parse_domain(GUEST).machine == "pc"
    assert parse_domain("<domain><name>g</name><os><type machine=' pc-q35-8.2 '>hvm</type></os></domain>").machine == (
        "pc-q35-8.2"
    )
    assert parse_domain("<domain><name>g</name><os><type>hvm</type></os></domain>").machine == ""
    assert parse_domain("<domain><name>g</name></domain>").machine == ""


def test_parse_disks():
    assert parse_disks(GUEST) == [
        Disk(
            target="vda",
            source="/var/lib/libvirt/images/web1.qcow2",
            format="qcow2",
            cache="none",
            bus="virtio",
            backing_chain=("/var/lib/libvirt/images/base/debian.raw",),
        ),
        Disk(target="vdb", source="/shared/web1-data.raw", format="raw", bus="virtio"),
        Disk(target="sda", source="", format="raw", readonly=True, device="cdrom", bus="sata"),
        Disk(target="vdc", source="", format="raw", bus="virtio", block_device="/dev/vg0/web1-swap"),  # not a file
    ]


def test_backing_chain_nearest_first():
    xml = """<domain><devices><disk type='file'><source file='/i/top.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/i/mid.qcow2'/>
        <backingStore type='file'><format type='raw'/><source file='/i/base.raw'/><backingStore/></backingStore>
      </backingStore><target dev='vda'/></disk></devices></domain>"""
    assert parse_disks(xml)[0].backing_chain == ("/i/mid.qcow2", "/i/base.raw")
    assert backing_formats(xml) == {"vda": "qcow2"}


def test_parse_nics():
    assert parse_nics(GUEST) == [
        Nic(type="bridge", source="br-guest", mac="52:54:00:12:34:56", model="virtio"),
        Nic(type="network", source="default", mac="52:54:00:12:34:57", model="e1000"),
    ]


@pytest.mark.parametrize(
    ("port", "virtualport"),
    [
        ("", ""),
        ("<virtualport type='openvswitch'><parameters interfaceid='1a2b'/></virtualport>", "openvswitch"),
        ("<virtualport type='openvswitch'/>", "openvswitch"),
        ("<virtualport type='midonet'><parameters interfaceid='1a2b'/></virtualport>", "midonet"),
        ("<virtualport><parameters interfaceid='1a2b'/></virtualport>", "none"),  # libvirt's name for no type
    ],
)
def test_parse_nics_virtualport(port, virtualport):
    xml = f"<domain><devices><interface type='bridge'><source bridge='br-ovs'/>{port}</interface></devices></domain>"
    assert parse_nics(xml) == [Nic(type="bridge", source="br-ovs", virtualport=virtualport)]


@pytest.mark.parametrize("xml", ["<domain><name>g</name>", "not xml at all", "<network><name>n</name></network>"])
def test_invalid_xml(xml):
    with pytest.raises(InvalidArgument) as err:
        parse_domain(xml)
    assert err.value.reason == "INVALID_XML"


# ------------------------------------------------------------------------ rewrite


def facts(xml):
    """What an operator would compare in two definitions."""
    root = ET.fromstring(xml)
    return {
        "name": root.findtext("name"),
        "uuid": root.findtext("uuid"),
        "kernel": root.findtext("os/kernel"),
        "initrd": root.findtext("os/initrd"),
        "disks": {d.target: d.source for d in parse_disks(xml)},
        "backing": {d.target: d.backing_chain for d in parse_disks(xml)},
        "block": root.find("devices/disk[@type='block']/source").get("dev"),
        "nics": [n.source for n in parse_nics(xml)],
        "macs": [n.mac for n in parse_nics(xml)],
        "serial": root.find("devices/serial/source").get("path"),
        "owner": root.find("metadata/{http://example.org/app/1}owner").get("team"),
    }


BEFORE = facts(GUEST)


@pytest.mark.parametrize(
    ("mapping", "plans", "changed"),
    [
        pytest.param(HostMapping(), [], {}, id="empty mapping changes nothing"),
        pytest.param(
            HostMapping(bridges={"br-guest": "br-vm"}), [], {"nics": ["br-vm", "default"]}, id="bridge mapped"
        ),
        pytest.param(
            HostMapping(networks={"default": "guests"}), [], {"nics": ["br-guest", "guests"]}, id="network mapped"
        ),
        pytest.param(
            HostMapping(bridges={"default": "x"}, networks={"br-guest": "y"}),
            [],
            {},
            id="bridge map does not touch networks and vice versa",
        ),
        pytest.param(
            HostMapping(path_prefixes={"/var/lib/libvirt/images": "/srv/images"}),
            [],
            {
                "disks": {"vda": "/srv/images/web1.qcow2", "vdb": "/shared/web1-data.raw", "sda": "", "vdc": ""},
                "backing": {"vda": ("/srv/images/base/debian.raw",), "vdb": (), "sda": (), "vdc": ()},
            },
            id="disk path prefix mapped with its backing file",
        ),
        pytest.param(
            HostMapping(path_prefixes={"/var/lib/libvirt/img": "/srv"}),
            [],
            {},
            id="prefix matches whole components only",
        ),
        pytest.param(
            HostMapping(path_prefixes={"/var/lib/libvirt": "/data/libvirt"}),
            [],
            {
                "initrd": "/data/libvirt/boot/initrd.img",
                "disks": {
                    "vda": "/data/libvirt/images/web1.qcow2",
                    "vdb": "/shared/web1-data.raw",
                    "sda": "",
                    "vdc": "",
                },
                "backing": {"vda": ("/data/libvirt/images/base/debian.raw",), "vdb": (), "sda": (), "vdc": ()},
            },
            id="a prefix that matches the initrd maps it too; the kernel stays",
        ),
        pytest.param(
            HostMapping(path_prefixes={"/shared": "/mnt/shared"}),
            [],
            {
                "serial": "/mnt/shared/console/web1.log",
                "disks": {
                    "vda": "/var/lib/libvirt/images/web1.qcow2",
                    "vdb": "/mnt/shared/web1-data.raw",
                    "sda": "",
                    "vdc": "",
                },
            },
            id="serial log follows a matching prefix",
        ),
        pytest.param(
            HostMapping(
                bridges={"br-nope": "br-x"},
                networks={"nope": "x"},
                path_prefixes={"/nowhere": "/else", "/dev/vg0": "/dev/vg1"},
            ),
            [],
            {},
            id="mapping that matches nothing is harmless; block devices untouched",
        ),
        pytest.param(
            HostMapping(path_prefixes={"/var/lib/libvirt/images": "/srv/images"}),
            [
                DiskPlan(
                    target="vda",
                    source="/var/lib/libvirt/images/web1.qcow2",
                    destination="/fast/web1.qcow2",
                    backing_file="/golden/debian.raw",
                )
            ],
            {
                "disks": {"vda": "/fast/web1.qcow2", "vdb": "/shared/web1-data.raw", "sda": "", "vdc": ""},
                "backing": {"vda": ("/golden/debian.raw",), "vdb": (), "sda": (), "vdc": ()},
            },
            id="a plan's destination and backing file win over the prefix",
        ),
    ],
)
def test_rewrite_for_target(mapping, plans, changed):
    after = facts(rewrite_for_target(GUEST, mapping, plans))
    assert after == {**BEFORE, **changed}


def test_rewrite_keeps_everything_else():
    out = rewrite_for_target(GUEST, HostMapping(bridges={"br-guest": "br-vm"}), [])
    same = ET.fromstring(GUEST)
    same.find("devices/interface/source").set("bridge", "br-vm")
    assert ET.tostring(ET.fromstring(out)) == ET.tostring(same)
    assert "xmlns:app=" in out  # the metadata keeps its prefix


def test_rewrite_refuses_a_plan_for_a_disk_the_domain_lacks():
    with pytest.raises(InvalidArgument) as err:
        rewrite_for_target(GUEST, HostMapping(), [DiskPlan(target="vdz", source="/x")])
    assert err.value.reason == "DISK_NOT_IN_DOMAIN"
    assert "vda" in err.value.hint


def test_a_passing_bounds_check_is_remembered_and_a_refusal_never_is():
    from ferry.agent import domxml

    xml = "<domain><name>remembered</name><uuid>5b1f0e4c-0000-4000-8000-0000000000aa</uuid></domain>"
    before = domxml._check_bounds_remembered.cache_info().hits
    assert parse_domain(xml).name == "remembered" and parse_domain(xml).name == "remembered"
    assert domxml._check_bounds_remembered.cache_info().hits >= before + 1
    bad = "<!DOCTYPE d [<!ENTITY a 'x'>]><domain>&a;</domain>"
    for _ in range(2):  # refused each time, from its own check
        with pytest.raises(InvalidArgument) as err:
            parse_domain(bad)
        assert "DOCTYPE" in err.value.message
    deep = "<domain>" + "<a>" * 300 + "</a>" * 300 + "</domain>"
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            parse_domain(deep)

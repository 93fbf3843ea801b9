"""Annotation readers, each on a small tree written in that dataset's format."""

from __future__ import annotations

import json
import os

import pytest

from videomap.data import (
    BREAKFAST_CLASSES,
    AnnotationError,
    VideoRecord,
    detect_format,
    read_annotations,
    read_class_names,
)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# -------------------------------------------------------------------------------------------- lists


def test_space_and_comma_lists(tmp_path):
    (tmp_path / "space.txt").write_text("a/x.mp4 0\n\n# comment\nb/y.mp4 2\n")
    (tmp_path / "comma.csv").write_text("a/x.mp4,0\nb/y.mp4,2\n")
    for name in ("space.txt", "comma.csv"):
        recs, classes = read_annotations(tmp_path / name, root="/data")
        assert recs == [VideoRecord("/data/a/x.mp4", 0), VideoRecord("/data/b/y.mp4", 2)]
        assert classes == ["0", "1", "2"]


def test_list_paths_with_spaces_and_commas(tmp_path):
    f = tmp_path / "list.csv"
    f.write_text('my videos/clip one.mp4,3\nplain.mp4 1\na,b.mp4 2\n"quoted, name.mp4",0\nspace sep/with space.mp4 4\n')
    recs, _ = read_annotations(f, "list", root="R")
    assert [r.path for r in recs] == [os.path.join("R", p) for p in
                                     ("my videos/clip one.mp4", "plain.mp4", "a,b.mp4", "quoted, name.mp4",
                                      "space sep/with space.mp4")]
    assert [r.label for r in recs] == [3, 1, 2, 0, 4]


def test_list_root_defaults_to_list_folder_and_header_is_skipped(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("path,label\nv.mp4,1\n")
    recs, _ = read_annotations(f)
    assert recs == [VideoRecord(str(tmp_path / "v.mp4"), 1)]


def test_list_class_names_from_file(tmp_path):
    (tmp_path / "l.txt").write_text("v.mp4 1\n")
    (tmp_path / "classes.txt").write_text("walk\nrun\n")
    assert read_annotations(tmp_path / "l.txt", classes=tmp_path / "classes.txt").classes == ["walk", "run"]
    with pytest.raises(AnnotationError, match="out of range"):
        read_annotations(tmp_path / "l.txt", classes=["walk"])


@pytest.mark.parametrize("bad", ["v.mp4 x", "just_a_path.mp4", "v.mp4,-1", "v.mp4, 1.5"])
def test_list_malformed_line_names_file_and_line(tmp_path, bad):
    f = tmp_path / "bad.txt"
    f.write_text(f"ok.mp4 0\nok2.mp4 1\n{bad}\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(f, "list")
    assert str(f) in str(err.value) and "line 3" in str(err.value)


# ----------------------------------------------------------------------------------------- kinetics


K400_CSV = """label,youtube_id,time_start,time_end,split,is_cc
abseiling,--3ouPhoy2A,20,30,train,0
air drumming,-VtLx-mcPds,3,13,train,0
air drumming,zzz_AAAA,100,110,train,0
"""


def test_kinetics_csv_label_folders_flat_and_underscored(tmp_path):
    root = tmp_path / "videos"
    touch(root / "abseiling" / "--3ouPhoy2A_000020_000030.mp4")        # label folder
    touch(root / "air_drumming" / "-VtLx-mcPds_000003_000013.mp4")     # spaces as underscores
    touch(root / "zzz_AAAA_000100_000110.mp4")                          # flat
    (tmp_path / "train.csv").write_text(K400_CSV)
    assert detect_format(tmp_path / "train.csv") == "kinetics_csv"
    recs, classes = read_annotations(tmp_path / "train.csv", root=root)
    assert classes == ["abseiling", "air drumming"]
    assert recs == [VideoRecord(str(root / "abseiling" / "--3ouPhoy2A_000020_000030.mp4"), 0),
                    VideoRecord(str(root / "air_drumming" / "-VtLx-mcPds_000003_000013.mp4"), 1),
                    VideoRecord(str(root / "zzz_AAAA_000100_000110.mp4"), 1)]


def test_kinetics_csv_without_is_cc_and_fixed_classes(tmp_path):
    f = tmp_path / "val.csv"
    f.write_text("label,youtube_id,time_start,time_end,split\nair drumming,abc,0,10,val\n")
    recs, classes = read_annotations(f, "kinetics_csv", root=tmp_path, classes=["abseiling", "air drumming"])
    assert classes == ["abseiling", "air drumming"] and recs[0].label == 1
    # A missing file keeps the label-folder location: it fails later, as a corrupt video.
    assert recs[0].path == str(tmp_path / "air drumming" / "abc_000000_000010.mp4")
    with pytest.raises(AnnotationError, match="line 2"):
        read_annotations(f, "kinetics_csv", classes=["abseiling"])


def test_kinetics_csv_errors_name_line(tmp_path):
    f = tmp_path / "k.csv"
    f.write_text("label,youtube_id,time_start,time_end,split\nabseiling,a,0,10,train\nabseiling,b,zero,10,train\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(f, "kinetics_csv")
    assert str(f) in str(err.value) and "line 3" in str(err.value)
    g = tmp_path / "short.csv"
    g.write_text("label,youtube_id,time_start,time_end,split\nabseiling,a,0\n")
    with pytest.raises(AnnotationError, match="line 2"):
        read_annotations(g, "kinetics_csv")
    h = tmp_path / "nohdr.csv"
    h.write_text("youtube_id,split\na,train\n")
    with pytest.raises(AnnotationError, match="line 1"):
        read_annotations(h, "kinetics_csv")


# --------------------------------------------------------------------------------------------- ssv2


def write_ssv2(tmp_path, entries):
    labels = {"Holding something next to something": "1", "Pushing something from left to right": "0",
              "Pushing something from right to left": "2"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "train.json").write_text(json.dumps(entries))
    return tmp_path / "train.json"


def test_ssv2_templates_map_to_labels(tmp_path):
    f = write_ssv2(tmp_path, [
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
        {"id": "42326", "label": "pushing a pen from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
    ])
    touch(tmp_path / "videos" / "42326.mp4")
    assert detect_format(f) == "ssv2"
    recs, classes = read_annotations(f, root=tmp_path / "videos")
    assert classes == ["Pushing something from left to right", "Holding something next to something",
                       "Pushing something from right to left"]
    assert recs == [VideoRecord(str(tmp_path / "videos" / "78687.webm"), 1),
                    VideoRecord(str(tmp_path / "videos" / "42326.mp4"), 0)]


def test_ssv2_errors_name_json_index(tmp_path):
    f = write_ssv2(tmp_path, [{"id": "1", "template": "Pushing [something] from left to right"},
                              {"id": "2", "template": "Dancing with [something]"}])
    with pytest.raises(AnnotationError) as err:
        read_annotations(f, "ssv2")
    assert str(f) in str(err.value) and "entry 1" in str(err.value)
    g = write_ssv2(tmp_path, [{"id": "1"}])
    with pytest.raises(AnnotationError, match="entry 0"):
        read_annotations(g, "ssv2")


# ---------------------------------------------------------------------------------------- breakfast


def test_breakfast_csv_nested_paths_and_names(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("file_name,duration,action,class_id\nP03-cam01-P03_cereals,56,cereals,0\n"
                 "P03-stereo-P03_tea_ch0,88,tea,2\nP04-webcam02-P04_salat,186,salat,9\n")
    touch(tmp_path / "bf" / "P04-webcam02-P04_salat.mp4")  # flat copies are found too
    assert detect_format(f) == "breakfast"
    recs, classes = read_annotations(f, root=tmp_path / "bf")
    assert classes == list(BREAKFAST_CLASSES)
    assert recs == [VideoRecord(str(tmp_path / "bf" / "P03" / "cam01" / "P03_cereals.avi"), 0),
                    VideoRecord(str(tmp_path / "bf" / "P03" / "stereo" / "P03_tea_ch0.avi"), 2),
                    VideoRecord(str(tmp_path / "bf" / "P04-webcam02-P04_salat.mp4"), 9)]


def test_breakfast_errors_name_line(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text("file_name,duration,action,class_id\nP03-cam01-P03_cereals,56,cereals,0\nP03-cam01-P03_tea,88,tea\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(f, "breakfast")
    assert str(f) in str(err.value) and "line 3" in str(err.value)
    f.write_text("file_name,duration,action,class_id\nA,1,cereals,0\nB,1,coffee,0\n")
    with pytest.raises(AnnotationError, match="line 3"):
        read_annotations(f, "breakfast")


# --------------------------------------------------------------------------------------------- coin


def write_coin(tmp_path):
    db = {"database": {
        "vid_a": {"recipe_type": 0, "class": "ChangeCarTire", "subset": "training", "start": 0, "end": 10,
                  "duration": 12.0, "video_url": "", "annotation": []},
        "vid_b": {"recipe_type": 2, "class": "MakeCoffee", "subset": "testing", "annotation": []},
        "vid_c": {"recipe_type": 2, "class": "MakeCoffee", "subset": "training", "annotation": []},
    }}
    f = tmp_path / "COIN.json"
    f.write_text(json.dumps(db))
    return f


def test_coin_json_splits_and_layouts(tmp_path):
    f = write_coin(tmp_path)
    touch(tmp_path / "videos" / "vid_c.mp4")
    assert detect_format(f) == "coin"
    train, classes = read_annotations(f, root=tmp_path / "videos", split="train")
    assert classes == ["ChangeCarTire", "1", "MakeCoffee"]  # names over the whole database
    assert train == [VideoRecord(str(tmp_path / "videos" / "0" / "vid_a.mp4"), 0),
                     VideoRecord(str(tmp_path / "videos" / "vid_c.mp4"), 2)]
    test, test_classes = read_annotations(f, "coin", root=tmp_path / "videos", split="testing")
    assert [r.label for r in test] == [2] and test_classes == classes
    with pytest.raises(ValueError, match="split"):
        read_annotations(f, "coin")


def test_coin_error_names_entry(tmp_path):
    f = tmp_path / "COIN.json"
    f.write_text(json.dumps({"database": {"a": {"recipe_type": 1, "subset": "training"},
                                          "b": {"recipe_type": "x", "subset": "training"}}}))
    with pytest.raises(AnnotationError) as err:
        read_annotations(f, "coin", split="training")
    assert str(f) in str(err.value) and "entry 1" in str(err.value) and "'b'" in str(err.value)


# ------------------------------------------------------------------------------------------- folder


def test_folder_tree(tmp_path):
    touch(tmp_path / "run" / "b.mp4")
    touch(tmp_path / "run" / "sub" / "c.AVI")
    touch(tmp_path / "walk" / "a.mkv")
    touch(tmp_path / "walk" / "notes.txt")
    (tmp_path / "empty_class").mkdir()
    assert detect_format(tmp_path) == "folder"
    recs, classes = read_annotations(tmp_path)
    assert classes == ["empty_class", "run", "walk"]
    assert recs == [VideoRecord(str(tmp_path / "run" / "b.mp4"), 1),
                    VideoRecord(str(tmp_path / "run" / "sub" / "c.AVI"), 1),
                    VideoRecord(str(tmp_path / "walk" / "a.mkv"), 2)]
    recs2, classes2 = read_annotations(tmp_path, "folder", classes=["walk", "run", "empty_class"])
    assert classes2 == ["walk", "run", "empty_class"] and [r.label for r in recs2] == [1, 1, 0]


# ---------------------------------------------------------------------------------------- dispatch


def test_unknown_format_and_class_name_sources(tmp_path):
    with pytest.raises(ValueError, match="unknown annotation format"):
        read_annotations(tmp_path, "hmdb")
    (tmp_path / "m.json").write_text(json.dumps({"b": 1, "a": "0"}))
    assert read_class_names(tmp_path / "m.json") == ["a", "b"]
    (tmp_path / "l.json").write_text(json.dumps(["x", "y"]))
    assert read_class_names(tmp_path / "l.json") == ["x", "y"]
    (tmp_path / "gap.json").write_text(json.dumps({"a": 0, "c": 2}))
    with pytest.raises(AnnotationError, match="missing"):
        read_class_names(tmp_path / "gap.json")

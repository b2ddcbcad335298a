"""The paper's numbers: Zeiler & Fergus 2014 (arXiv 1311.2901 v3), Tables 2-7, in %.

    for key, label, top1, top5, test5 in paper_numbers.TABLE2: ...

`zfjax.report.tables` puts ours beside them.
"""

# Table 2: ImageNet 2012 error: (row key, the paper's label, val top-1, val top-5, test
# top-5). Keys: a Table 3 variant (one net) or 'N x variant + ...' (ensembles).
TABLE2 = (
    ('alexnet', 'Our replication of Krizhevsky et al., 1 convnet', 40.5, 18.1, None),
    ('zfnet', '1 convnet as per Fig. 3', 38.4, 16.5, None),
    ('5 x zfnet', '5 convnets as per Fig. 3 - (a)', 36.7, 15.3, 15.3),
    ('zfnet-wide', '1 convnet as per Fig. 3 but with layers 3,4,5: 512,1024,512 maps '
     '- (b)', 37.5, 16.0, 16.1),
    ('5 x zfnet + 1 x zfnet-wide', '6 convnets, (a) & (b) combined', 36.0, 14.7, 14.8),
)

# Table 3: (variant, the paper's label, train top-1, val top-1, val top-5).
TABLE3 = (
    ('alexnet', 'Our replication of Krizhevsky et al., 1 convnet', 35.1, 40.5, 18.1),
    ('alexnet-no-conv34', 'Removed layers 3,4', 41.8, 45.4, 22.1),
    ('alexnet-no-fc7', 'Removed layer 7', 27.4, 40.0, 18.4),
    ('alexnet-no-fc67', 'Removed layers 6,7', 27.4, 44.8, 22.4),
    ('alexnet-no-conv34-fc67', 'Removed layers 3,4,6,7', 71.1, 71.3, 50.1),
    ('alexnet-fc2048', 'Adjust layers 6,7: 2048 units', 40.3, 41.7, 18.8),
    ('alexnet-fc8192', 'Adjust layers 6,7: 8192 units', 26.8, 40.0, 18.1),
    ('zfnet', 'Our model (as per Fig. 3)', 33.1, 38.4, 16.5),
    ('zfnet-fc2048', 'Adjust layers 6,7: 2048 units', 38.2, 40.2, 17.6),
    ('zfnet-fc8192', 'Adjust layers 6,7: 8192 units', 22.0, 38.8, 17.0),
    ('zfnet-wide', 'Adjust layers 3,4,5: 512,1024,512 maps', 18.8, 37.5, 16.0),
    ('zfnet-wide-fc8192', 'Adjust layers 6,7: 8192 units and layers 3,4,5: '
     '512,1024,512 maps', 10.0, 38.3, 16.9),
)

# Tables 4-6: {dataset: {(method, features, classifier): {train images per class: (mean,
# std)}}}; VOC has fixed splits (train_per_class None). std None: not quoted.
TRANSFER = {
    'caltech101': {
        ('frozen', 'fc7', 'softmax'): {15: (83.8, 0.5), 30: (86.5, 0.5)},
        ('scratch', None, None): {15: (22.8, None), 30: (46.5, None)},
    },
    'caltech256': {
        ('frozen', 'fc7', 'softmax'): {15: (65.7, None), 30: (70.6, None), 45: (72.7, None),
                                       60: (74.2, None)},
        ('scratch', None, None): {15: (9.0, None), 30: (22.5, None), 45: (31.2, None),
                                  60: (38.8, None)},
    },
    'voc2012': {('frozen', 'fc7', 'softmax'): {None: (79.0, None)}},
}

# Table 7: (classifier, layer 1-7, Caltech-101 at 30/class, Caltech-256 at 60/class).
TABLE7 = (
    ('svm', 1, 44.8, 24.6), ('svm', 2, 66.2, 39.6), ('svm', 3, 72.3, 46.0),
    ('svm', 4, 76.6, 51.3), ('svm', 5, 86.2, 65.6), ('svm', 7, 85.5, 71.7),
    ('softmax', 5, 82.9, 65.7), ('softmax', 7, 85.4, 72.6),
)
TABLE7_SIZES = {'caltech101': 30, 'caltech256': 60}  # training images per class

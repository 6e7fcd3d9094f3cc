"""Reading films: files and DICOM, preprocessing, labelled folders and archives."""
